"""Torch helpers shared by the runtimes: devices, seeding, out-of-memory, JSON output.

Imported only by runtime modules (torch is heavy; the worker never imports it directly).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import torch

from miner.runtime.base import JobFailed

# Seeding touches torch's global generators; jobs that seed hold this lock while they use
# them, so two concurrent jobs do not interleave their random streams.
RNG_LOCK = threading.RLock()

MAX_SEED = 2**63 - 1


def torch_device(device: str) -> torch.device:
    """A torch device for the miner's device string, failing clearly when it is absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise JobFailed(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise JobFailed(f"device {device} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise JobFailed(f"device {device} does not exist ({torch.cuda.device_count()} GPUs)")
    return dev


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with torch's generators seeded, restoring them afterwards."""
    with RNG_LOCK:
        if seed is None:
            yield
            return
        devices: list[int] = []
        if device.type == "cuda":
            devices = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            torch.manual_seed(seed)
            yield


# How allocators word running out: CUDA ("CUDA out of memory") and the CPU allocator.
OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or any(m in text for m in OOM_MARKERS)


@contextlib.contextmanager
def oom_as_job_failed(device: str) -> Iterator[None]:
    """Turn an out-of-memory during a job into JobFailed and give the cached memory back."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or is_oom(exc):
            if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
                torch.cuda.empty_cache()
            raise JobFailed(f"out of memory on {device}; try a smaller input or batch") from None
        raise


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON; NaN or infinity in a model output is a job failure, not bad JSON."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise JobFailed("the model produced NaN or infinite values") from None
    return text.encode()
