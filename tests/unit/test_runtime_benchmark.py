"""benchmark runtime on CPU: real matmuls, figures that add up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from miner.runtime.base import JobCancelled, JobFailed, ModelSpec
from miner.runtime.registry import ModelCache, get_runtime, run_job
from miner.runtime.tiny import ProgressLog, local_context

SPEC = ModelSpec("bench", "benchmark", None, 10, "second", {})


def bench(tmp_path: Path, **params: Any) -> tuple[dict[str, Any], int, ProgressLog]:
    ctx, log = local_context(None, params, work_dir=tmp_path)
    result = run_job(SPEC, ctx, ModelCache())
    assert result.content_type == "application/json"
    return json.loads(result.output_bytes), result.units, log


def test_cpu_fp32_throughput_is_measured(tmp_path: Path) -> None:
    body, units, log = bench(tmp_path, size=128, duration_s=0.1)
    assert body["device"] == "cpu" and units >= 1
    [fp32] = body["results"]
    assert fp32["dtype"] == "fp32" and fp32["size"] == 128
    assert fp32["iterations"] >= 1 and fp32["seconds"] >= 0.1
    expected = 2 * 128**3 * fp32["iterations"] / fp32["seconds"] / 1e12
    assert fp32["tflops"] == pytest.approx(expected, rel=1e-4)
    assert 0 < fp32["tflops"] < 100  # a CPU, not a made-up figure
    assert fp32["max_rel_error"] < 1e-4
    assert body["best_tflops"] == fp32["tflops"]
    assert log.reports[-1] == (100, "benchmark done")
    assert get_runtime("benchmark").default_unit == "second"


def test_half_precision_can_be_asked_for_on_cpu(tmp_path: Path) -> None:
    body, _, _ = bench(tmp_path, size=64, duration_s=0.02, dtypes="fp32,bf16")
    assert [r["dtype"] for r in body["results"]] == ["fp32", "bf16"]
    assert all(r["tflops"] > 0 for r in body["results"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"size": 8}, "size must be between 16 and 4096"),
        ({"size": 100000}, "size must be between 16 and 4096"),
        ({"duration_s": 100}, "duration_s must be between"),
        ({"dtypes": ["fp8"]}, "unknown dtype 'fp8'"),
        ({"dtypes": ["fp32", "fp32"]}, "lists a dtype twice"),
        ({"iterations": 3}, "unknown param(s) for benchmark: iterations"),
    ],
)
def test_bad_params_fail_clearly(tmp_path: Path, params: dict[str, Any], message: str) -> None:
    with pytest.raises(JobFailed) as info:
        bench(tmp_path, **params)
    assert message in str(info.value)


def test_cancel_stops_the_benchmark(tmp_path: Path) -> None:
    log = ProgressLog()
    log.cancelled.set()
    ctx, _ = local_context(None, {"size": 64}, work_dir=tmp_path, progress=log)
    with pytest.raises(JobCancelled):
        run_job(SPEC, ctx, ModelCache())


def test_missing_cuda_device_fails_the_job(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    ctx, _ = local_context(None, {}, work_dir=tmp_path, device="cuda:0")
    with pytest.raises(JobFailed, match="CUDA is not available"):
        run_job(SPEC, ctx, ModelCache())
