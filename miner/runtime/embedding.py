"""embedding: sentence embeddings from a local sentence-transformers directory.

Input: a string or a list of strings. Params: ``normalize`` (unit-length vectors,
default true), ``batch_size``. Unit: input items. Output JSON::

    {"model": "minilm", "embeddings": [[0.01, ...], ...], "dim": 384, "count": 2}

The model is read with ``local_files_only=True``: nothing is ever downloaded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as hf_logging

from miner.runtime.base import JobContext, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.params import (
    check_cancelled,
    check_known,
    file_input,
    get_bool,
    option_int,
    require_int,
    text_list,
)
from miner.runtime.torchutil import json_bytes, oom_as_job_failed, torch_device

# A daemon logs; it does not draw progress bars on stderr.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

PARAMS = ("normalize", "batch_size")


@dataclass
class LoadedEncoder:
    model: Any
    dim: int
    lock: threading.Lock = field(default_factory=threading.Lock)


class EmbeddingRuntime:
    name = "embedding"
    default_unit = "item"

    def load(self, spec: ModelSpec, device: str) -> LoadedEncoder:
        if not spec.path or not Path(spec.path).is_dir():
            raise JobFailed(f"model {spec.name}: path {spec.path!r} is not a local directory")
        dev = torch_device(device)
        model = SentenceTransformer(spec.path, device=str(dev), local_files_only=True)
        model.eval()
        dim = model.get_embedding_dimension()
        if not isinstance(dim, int):
            raise JobFailed(f"model {spec.name}: cannot tell its embedding dimension")
        return LoadedEncoder(model, dim)

    def run(self, model: LoadedEncoder, spec: ModelSpec, ctx: JobContext) -> RuntimeResult:
        check_known(ctx.params, PARAMS, self.name)
        texts, _single = text_list(
            file_input(ctx.input),
            "text",
            max_items=option_int(spec.options, "max_items", 4096),
            max_chars=option_int(spec.options, "max_chars", 20_000),
        )
        batch_size = require_int(ctx.params, "batch_size", 32, 1, 1024)
        normalize = get_bool(ctx.params, "normalize", True)

        vectors: list[list[float]] = []
        with model.lock, oom_as_job_failed(ctx.device), torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                check_cancelled(ctx)
                chunk = texts[start : start + batch_size]
                out = model.model.encode(
                    chunk,
                    batch_size=batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=normalize,
                    show_progress_bar=False,
                )
                vectors.extend(out.float().cpu().tolist())
                done = start + len(chunk)
                ctx.report_progress(min(99, 100 * done // len(texts)), f"{done}/{len(texts)}")
        check_cancelled(ctx)
        body = {"model": spec.name, "embeddings": vectors, "dim": model.dim, "count": len(texts)}
        ctx.report_progress(100, f"{len(texts)} embedded")
        return RuntimeResult(
            output_bytes=json_bytes(body),
            content_type="application/json",
            filename="output.json",
            units=len(texts),
            summary={"count": len(texts), "dim": model.dim, "normalized": normalize},
        )


RUNTIME = EmbeddingRuntime()
