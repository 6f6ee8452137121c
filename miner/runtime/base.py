"""The interface every miner runtime implements.

A runtime turns one job (``JobContext``) into one ``RuntimeResult`` using a model that
``Runtime.load`` prepared from a ``ModelSpec`` (one ``[[models]]`` entry of the miner
config). Runtimes run in worker threads, poll ``ctx.cancelled`` between steps and raise
``JobFailed`` with a user-facing reason for anything the client did wrong or the device
could not do (bad input, unknown params, out of memory).

This module imports no torch: the worker and the registry import it cheaply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

RUNTIME_NAMES = ("text-generation", "embedding", "torchscript", "training", "benchmark", "echo")

# The metered unit of each runtime when a [[models]] entry names none (SPEC section 9).
DEFAULT_UNITS: Mapping[str, str] = {
    "text-generation": "token",
    "embedding": "item",
    "torchscript": "item",
    "training": "second",
    "benchmark": "second",
    "echo": "byte",
}


@dataclass(frozen=True)
class ModelSpec:
    """One ``[[models]]`` entry of configs/miner.toml."""

    name: str
    runtime: str  # text-generation | embedding | torchscript | training | benchmark | echo
    path: str | None
    price_uait_per_unit: int
    unit: str  # token | item | second | byte
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobContext:
    job_id: str
    input: Any  # decoded JSON value, or bytes for a file input
    params: Mapping[str, Any]
    device: str  # "cpu", "cuda", "cuda:0"
    # Per-job scratch dir kept across attempts (checkpoints), removed once the result is
    # accepted; not created in advance: a runtime that writes there makes it.
    work_dir: Path
    report_progress: Callable[[int, str | None], None]  # thread-safe (percent, message)
    cancelled: threading.Event


@dataclass(frozen=True)
class RuntimeResult:
    output_bytes: bytes  # exactly what the client downloads; output_sha256 is over these
    content_type: str  # "application/json" for JSON outputs
    filename: str  # e.g. "output.json", "model.safetensors"
    units: int  # metered units (unit of the ModelSpec)
    summary: Mapping[str, Any]  # small JSON-able facts (metrics, shapes)


class JobFailed(Exception):
    """A clear, user-facing reason; the job fails with ``str(exc)``."""


class JobCancelled(JobFailed):
    """The job's ``cancelled`` event was set; the runtime stopped between steps."""


class Runtime(Protocol):
    name: str
    default_unit: str

    def load(self, spec: ModelSpec, device: str) -> Any:
        """Load the model named by ``spec`` onto ``device`` (the registry caches it)."""
        ...

    def run(self, model: Any, spec: ModelSpec, ctx: JobContext) -> RuntimeResult:
        """Run one job with a loaded model; raise ``JobFailed`` for a user-facing error."""
        ...


def default_unit(runtime: str) -> str:
    """The unit a runtime meters in when its model entry names none."""
    try:
        return DEFAULT_UNITS[runtime]
    except KeyError:
        raise ValueError(f"unknown runtime {runtime!r}") from None
