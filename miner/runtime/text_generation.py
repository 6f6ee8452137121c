"""text-generation: a causal language model from a local directory (transformers).

Input: a prompt string or a list of them (one batch). Params: ``max_new_tokens``,
``temperature`` (0 = greedy), ``top_p``, ``seed``. Unit: generated tokens, counted per
prompt up to and including the end-of-sequence token. Output JSON::

    {"model": "gpt2", "generations": [{"prompt": "...", "text": "...", "tokens": 12}],
     "text": "..."}          # "text" only when the input was a single string

Models are read with ``local_files_only=True``: nothing is ever downloaded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.utils import logging as hf_logging

from miner.runtime.base import JobContext, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.params import (
    check_cancelled,
    check_known,
    file_input,
    get_float,
    get_int,
    option_int,
    require_int,
    text_list,
)
from miner.runtime.torchutil import MAX_SEED, json_bytes, oom_as_job_failed, seeded, torch_device

# A daemon logs; it does not draw progress bars on stderr.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

PARAMS = ("max_new_tokens", "temperature", "top_p", "seed")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedLM:
    model: Any
    tokenizer: Any
    device: torch.device
    max_positions: int | None
    # HF models are not safe to drive from two threads at once; jobs on one model queue here.
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Steps(StoppingCriteria):
    """Reports progress each generated token and stops generation once cancelled."""

    def __init__(self, ctx: JobContext, prompt_len: int, max_new: int) -> None:
        self.ctx, self.prompt_len, self.max_new = ctx, prompt_len, max_new
        self.last_percent = -1

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = input_ids.shape[1] - self.prompt_len
        percent = min(99, 100 * done // self.max_new)
        if percent != self.last_percent:
            self.last_percent = percent
            self.ctx.report_progress(percent, f"{done}/{self.max_new} tokens")
        stop = self.ctx.cancelled.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class TextGenerationRuntime:
    name = "text-generation"
    default_unit = "token"

    def load(self, spec: ModelSpec, device: str) -> LoadedLM:
        if not spec.path or not Path(spec.path).is_dir():
            raise JobFailed(f"model {spec.name}: path {spec.path!r} is not a local directory")
        dev = torch_device(device)
        dtype_name = spec.options.get("dtype", "float32")
        if dtype_name not in _DTYPES:
            raise JobFailed(f"model {spec.name}: dtype must be one of {', '.join(_DTYPES)}")
        tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            spec.path, local_files_only=True, dtype=_DTYPES[dtype_name]
        )
        model.to(dev)  # type: ignore[arg-type]
        model.eval()  # type: ignore[no-untyped-call]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        cfg = model.config
        max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(
            cfg, "n_positions", None
        )
        return LoadedLM(model, tokenizer, dev, max_positions)

    def run(self, model: LoadedLM, spec: ModelSpec, ctx: JobContext) -> RuntimeResult:
        opts = spec.options
        check_known(ctx.params, PARAMS, self.name)
        limit = option_int(opts, "max_new_tokens_limit", 1024)
        prompts, single = text_list(
            file_input(ctx.input),
            "prompt",
            max_items=option_int(opts, "max_prompts", 32),
            max_chars=option_int(opts, "max_prompt_chars", 20_000),
        )
        max_new = require_int(ctx.params, "max_new_tokens", min(64, limit), 1, limit)
        temperature = get_float(ctx.params, "temperature", 1.0, 0.0, 100.0)
        if 0.0 < temperature < 0.01:
            raise JobFailed("param temperature must be 0 (greedy) or at least 0.01")
        top_p = get_float(ctx.params, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise JobFailed("param top_p must be greater than 0")
        seed = get_int(ctx.params, "seed", None, 0, MAX_SEED)
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise JobFailed(f"input[{i}] is an empty prompt")
        tok = model.tokenizer
        if tok.eos_token_id is None:
            raise JobFailed(f"model {spec.name} has no end-of-sequence token")

        check_cancelled(ctx)
        enc = tok(prompts, return_tensors="pt", padding=True)
        prompt_len = int(enc["input_ids"].shape[1])
        if prompt_len == 0:
            raise JobFailed("input prompts are empty")
        if model.max_positions is not None and prompt_len + max_new > model.max_positions:
            raise JobFailed(
                f"prompt ({prompt_len} tokens) plus max_new_tokens ({max_new}) exceeds the"
                f" model's context of {model.max_positions} tokens"
            )
        sample = temperature > 0.0
        gen = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max_new,
            do_sample=sample,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sample else {}),
        )
        steps = _Steps(ctx, prompt_len, max_new)
        enc = enc.to(model.device)
        with (
            model.lock,
            oom_as_job_failed(ctx.device),
            torch.inference_mode(),
            seeded(seed, model.device),
        ):
            try:
                out = model.model.generate(
                    **enc, generation_config=gen, stopping_criteria=StoppingCriteriaList([steps])
                )
            except RuntimeError as exc:
                if "probability tensor" not in str(exc):
                    raise
                # Sampling met NaN/inf logits (a broken or overflowing half-precision model).
                raise JobFailed(
                    "the model produced invalid probabilities; try temperature=0 or float32"
                ) from None
        check_cancelled(ctx)

        generations = []
        total = 0
        for i, row in enumerate(out[:, prompt_len:].tolist()):
            n = _generated_count(row, tok.eos_token_id)
            total += n
            text = tok.decode(row[:n], skip_special_tokens=True)
            generations.append({"prompt": prompts[i], "text": text, "tokens": n})
        body: dict[str, Any] = {"model": spec.name, "generations": generations}
        if single:
            body["text"] = generations[0]["text"]
        ctx.report_progress(100, f"{total} tokens generated")
        return RuntimeResult(
            output_bytes=json_bytes(body),
            content_type="application/json",
            filename="output.json",
            units=total,
            summary={
                "prompts": len(prompts),
                "generated_tokens": total,
                "max_new_tokens": max_new,
                "seed": seed,
            },
        )


def _generated_count(row: list[int], eos_id: int) -> int:
    """Tokens the model produced: up to and including the first end-of-sequence token."""
    try:
        return row.index(eos_id) + 1
    except ValueError:
        return len(row)


RUNTIME = TextGenerationRuntime()
