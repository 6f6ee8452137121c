"""Find runtimes by name and keep loaded models between jobs.

``get_runtime(name)`` imports the runtime's module only when first asked for it, so
importing this module (or ``miner.runtime.base``) never imports torch. Each runtime module
exposes ``RUNTIME``, an object satisfying ``base.Runtime``.

``ModelCache`` keeps loaded models, least recently used first out, under a bound on their
approximate size in bytes: a second job for a model does not pay the load again, and a
miner that serves many models does not hold them all.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from miner.runtime.base import (
    RUNTIME_NAMES,
    JobContext,
    JobFailed,
    ModelSpec,
    Runtime,
    RuntimeResult,
)

log = logging.getLogger(__name__)

_MODULES = {
    "text-generation": "miner.runtime.text_generation",
    "embedding": "miner.runtime.embedding",
    "torchscript": "miner.runtime.torchscript",
    "training": "miner.runtime.training",
    "benchmark": "miner.runtime.benchmark",
    "echo": "miner.runtime.echo",
}
assert set(_MODULES) == set(RUNTIME_NAMES)

DEFAULT_CACHE_BYTES = 8 * 2**30

_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; imports its module on first use."""
    module_name = _MODULES.get(name)
    if module_name is None:
        known = ", ".join(sorted(_MODULES))
        raise ValueError(f"unknown runtime {name!r} (known: {known})")
    with _runtimes_lock:
        found = _runtimes.get(name)
        if found is None:
            module = importlib.import_module(module_name)
            found = _find_runtime(module, name)
            _runtimes[name] = found
        return found


def _find_runtime(module: Any, name: str) -> Runtime:
    candidate = getattr(module, "RUNTIME", None)
    if candidate is None:
        # Accept a module that defines the runtime as a class rather than an instance.
        for value in vars(module).values():
            if isinstance(value, type) and getattr(value, "name", None) == name:
                candidate = value()
                break
    if candidate is None or not callable(getattr(candidate, "run", None)):
        raise ValueError(f"module {module.__name__} defines no runtime {name!r}")
    runtime: Runtime = candidate
    return runtime


def approx_bytes(model: Any) -> int:
    """Approximate memory held by a loaded model (parameters and buffers of its modules).

    Duck-typed so that this module never imports torch. A model object may also say its
    own size with an ``approx_bytes`` attribute or method.
    """
    seen: set[int] = set()
    return _approx(model, seen, depth=0)


def _approx(obj: Any, seen: set[int], depth: int) -> int:
    if obj is None or id(obj) in seen or depth > 4:
        return 0
    seen.add(id(obj))
    own = getattr(obj, "approx_bytes", None)
    if isinstance(own, int):
        return own
    if callable(own):
        value = own()
        return int(value) if isinstance(value, int) else 0
    if callable(getattr(obj, "parameters", None)) and callable(getattr(obj, "buffers", None)):
        return _tensor_bytes(obj.parameters()) + _tensor_bytes(obj.buffers())
    if callable(getattr(obj, "element_size", None)) and callable(getattr(obj, "numel", None)):
        return int(obj.element_size() * obj.numel())
    if isinstance(obj, dict):
        return sum(_approx(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_approx(v, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_approx(v, seen, depth + 1) for v in vars(obj).values())
    return 0


def _tensor_bytes(tensors: Iterable[Any]) -> int:
    return sum(int(t.element_size() * t.numel()) for t in tensors)


class ModelCache:
    """Loaded models keyed by (runtime, model name, path, device), LRU under a byte bound.

    A model larger than the bound on its own is still kept (alone): a miner configured
    to serve it must be able to run it.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, str, str], tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, str, str, str], threading.Lock] = {}
        self.loads = 0  # how many times a model was actually loaded (tests, metrics)

    @staticmethod
    def _key(spec: ModelSpec, device: str) -> tuple[str, str, str, str]:
        return (spec.runtime, spec.name, spec.path or "", device)

    def get(self, spec: ModelSpec, device: str, runtime: Runtime | None = None) -> Any:
        """The loaded model for ``spec`` on ``device``, loading it on a miss."""
        key = self._key(spec, device)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        # One loader per key; other keys keep loading and serving meanwhile.
        with load_lock:
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None:
                    self._entries.move_to_end(key)
                    return hit[0]
            rt = runtime if runtime is not None else get_runtime(spec.runtime)
            model = rt.load(spec, device)
            size = approx_bytes(model)
            with self._lock:
                self.loads += 1
                self._entries[key] = (model, size)
                self._evict(keep=key)
            log.info("model loaded", extra={"model": spec.name, "device": device, "bytes": size})
            return model

    def _evict(self, keep: tuple[str, str, str, str]) -> None:
        evicted = False
        while self.total_bytes() > self.max_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                self._entries.move_to_end(oldest)
                continue
            del self._entries[oldest]
            evicted = True
            log.info("model evicted", extra={"model": oldest[1], "device": oldest[3]})
        if evicted:
            release_device_memory()

    def total_bytes(self) -> int:
        return sum(size for _, size in self._entries.values())

    def names(self) -> list[str]:
        """Cached model names, least recently used first."""
        with self._lock:
            return [key[1] for key in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        release_device_memory()


def release_device_memory() -> None:
    """Hand cached CUDA blocks back after models were dropped or a job ran out of memory."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_job(spec: ModelSpec, ctx: JobContext, cache: ModelCache) -> RuntimeResult:
    """Load (or reuse) the model of ``spec`` and run one job with it.

    Out-of-memory on the device becomes ``JobFailed`` and the allocator cache is emptied,
    so the miner keeps serving. Other exceptions propagate: they are bugs.
    """
    runtime = get_runtime(spec.runtime)
    try:
        try:
            model = cache.get(spec, ctx.device, runtime)
        except (OSError, ValueError) as exc:
            # Missing or broken model files are the operator's to fix; the job fails clearly.
            raise JobFailed(f"model {spec.name} could not be loaded: {exc}") from None
        return runtime.run(model, spec, ctx)
    except JobFailed:
        raise
    except MemoryError as exc:
        release_device_memory()
        raise JobFailed(f"out of memory on {ctx.device}: {exc}") from None
    except RuntimeError as exc:
        if _is_oom(exc):
            release_device_memory()
            raise JobFailed(f"out of memory on {ctx.device}; use a smaller input") from None
        raise


def _is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom_type, type) and isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return any(m in text for m in ("out of memory", "can't allocate memory", "cannot allocate"))
