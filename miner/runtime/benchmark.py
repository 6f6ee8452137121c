"""benchmark: matmul throughput of the miner's device, in TFLOP/s.

Square matmuls of ``size`` run for about ``duration_s`` per dtype (fp32 everywhere;
bf16 and fp16 by default on CUDA), after a warm-up; each product is checked against a
float64 reference on a slice, so a device that returns garbage fast does not score.
The coordinator can compare the figures with the GPU a miner advertises. Unit: seconds
(ceil, at least 1). Output JSON::

    {"device": "cpu", "device_name": "...", "results": [{"dtype": "fp32", "size": 1024,
     "iterations": 40, "seconds": 1.01, "tflops": 0.085, "max_rel_error": 1e-6}],
     "best_tflops": 0.085}
"""

from __future__ import annotations

import math
import platform
import time
from typing import Any

import torch

from miner.runtime.base import JobContext, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.params import check_cancelled, check_known, get_float, require_int
from miner.runtime.torchutil import json_bytes, oom_as_job_failed, seeded, torch_device

PARAMS = ("size", "duration_s", "dtypes")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Tolerances per dtype for the float64 spot check (relative to the norm of a row).
_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 1e-2}


class BenchmarkRuntime:
    name = "benchmark"
    default_unit = "second"

    def load(self, spec: ModelSpec, device: str) -> torch.device:
        return torch_device(device)  # nothing to load; fail early on a missing device

    def run(self, model: torch.device, spec: ModelSpec, ctx: JobContext) -> RuntimeResult:
        started = time.monotonic()
        dev = model
        cuda = dev.type == "cuda"
        check_known(ctx.params, PARAMS, self.name)
        max_size = 16384 if cuda else 4096
        size = require_int(ctx.params, "size", 4096 if cuda else 512, 16, max_size)
        duration = get_float(ctx.params, "duration_s", 1.0, 0.01, 30.0)
        dtypes = _dtypes(ctx.params.get("dtypes"), cuda)

        results = []
        with oom_as_job_failed(ctx.device), torch.inference_mode():
            for i, name in enumerate(dtypes):
                check_cancelled(ctx)
                results.append(_measure(name, size, duration, dev, ctx))
                ctx.report_progress(
                    min(99, 100 * (i + 1) // len(dtypes)),
                    f"{name}: {results[-1]['tflops']:.3f} TFLOP/s",
                )
        seconds = max(1, math.ceil(time.monotonic() - started))
        body = {
            "device": str(dev),
            "device_name": _device_name(dev),
            "results": results,
            "best_tflops": max(r["tflops"] for r in results),
        }
        ctx.report_progress(100, "benchmark done")
        return RuntimeResult(
            output_bytes=json_bytes(body),
            content_type="application/json",
            filename="benchmark.json",
            units=seconds,
            summary={k: body[k] for k in ("device", "device_name", "best_tflops")},
        )


def _dtypes(value: Any, cuda: bool) -> list[str]:
    if value is None:
        return list(DTYPES) if cuda else ["fp32"]
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or len(value) > len(DTYPES):
        raise JobFailed(f"param dtypes must be a list drawn from {', '.join(DTYPES)}")
    for v in value:
        if v not in DTYPES:
            raise JobFailed(f"param dtypes: unknown dtype {v!r} (known: {', '.join(DTYPES)})")
    if len(set(value)) != len(value):
        raise JobFailed("param dtypes lists a dtype twice")
    return [str(v) for v in value]


def _measure(
    name: str, size: int, duration: float, dev: torch.device, ctx: JobContext
) -> dict[str, Any]:
    dtype = DTYPES[name]
    with seeded(size, dev):
        a = torch.randn(size, size, device=dev, dtype=torch.float32).to(dtype)
        b = torch.randn(size, size, device=dev, dtype=torch.float32).to(dtype)
    out = torch.empty(size, size, device=dev, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: kernels chosen, clocks up
    _sync(dev)
    rel_error = _check(a, b, out, name)
    # A few matmuls per sync keep a GPU's queue full; on a CPU one at a time keeps the
    # cancel latency at one product.
    per_round = 4 if dev.type == "cuda" else 1
    iterations = 0
    begin = time.perf_counter()
    elapsed = 0.0
    while elapsed < duration:
        check_cancelled(ctx)
        for _ in range(per_round):
            torch.matmul(a, b, out=out)
        iterations += per_round
        _sync(dev)
        elapsed = time.perf_counter() - begin
    flops = 2.0 * size**3 * iterations
    return {
        "dtype": name,
        "size": size,
        "iterations": iterations,
        "seconds": round(elapsed, 6),
        "tflops": float(f"{flops / elapsed / 1e12:.6g}"),
        "max_rel_error": float(f"{rel_error:.3g}"),
    }


def _check(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, name: str) -> float:
    """Compare a corner of the product with float64 on the CPU; fail on a wrong device."""
    rows, cols = min(8, a.shape[0]), min(64, b.shape[1])
    ref = a[:rows].double().cpu() @ b[:, :cols].double().cpu()
    got = out[:rows, :cols].double().cpu()
    scale = ref.norm(dim=1, keepdim=True).clamp_min(1e-12)
    error = float(((got - ref).norm(dim=1, keepdim=True) / scale).max())
    if not math.isfinite(error) or error > _TOLERANCE[name]:
        raise JobFailed(f"device computed a wrong {name} matmul (relative error {error:.3g})")
    return error


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return str(torch.cuda.get_device_name(dev))
    return platform.processor() or platform.machine() or "cpu"


RUNTIME = BenchmarkRuntime()
