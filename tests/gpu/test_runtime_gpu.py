"""GPU paths of the runtimes: CUDA device selection, bf16/fp16, out-of-memory recovery.

Every test carries ``@pytest.mark.gpu`` and skips without CUDA. Run on a GPU host with
``pytest tests/gpu -m gpu -q``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch
from torch import nn

from miner.runtime.base import JobCancelled, JobFailed, ModelSpec
from miner.runtime.registry import ModelCache, run_job
from miner.runtime.tiny import build_tiny_gpt2, build_tiny_torchscript, local_context

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(script|save)` is deprecated"),
]


def test_benchmark_measures_fp32_bf16_fp16_on_cuda(tmp_path: Path) -> None:
    spec = ModelSpec("bench", "benchmark", None, 1, "second", {})
    ctx, _ = local_context(
        None, {"size": 4096, "duration_s": 0.5}, work_dir=tmp_path, device="cuda:0"
    )
    result = run_job(spec, ctx, ModelCache())
    body = json.loads(result.output_bytes)
    by_dtype = {r["dtype"]: r for r in body["results"]}
    assert set(by_dtype) == {"fp32", "bf16", "fp16"}
    assert body["device_name"] == torch.cuda.get_device_name(0)
    # Tensor cores: half precision is clearly faster than fp32 on any recent GPU.
    assert by_dtype["bf16"]["tflops"] > 1.5 * by_dtype["fp32"]["tflops"] > 0
    print("benchmark", body)  # the figures, for the report (pytest -s)


def test_text_generation_bf16_on_cuda_is_seeded(tmp_path: Path) -> None:
    path = build_tiny_gpt2(tmp_path / "gpt2")
    spec = ModelSpec("tiny", "text-generation", str(path), 1, "token", {"dtype": "bfloat16"})
    cache = ModelCache()
    outs = []
    for _ in range(2):
        ctx, _ = local_context(
            ["Hello", "The quick"],
            {"max_new_tokens": 8, "seed": 11},
            work_dir=tmp_path,
            device="cuda",
        )
        outs.append(run_job(spec, ctx, cache).output_bytes)
    assert outs[0] == outs[1]
    loaded = cache.get(spec, "cuda")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert next(loaded.model.parameters()).device.type == "cuda"


def test_torchscript_on_cuda_matches_cpu(tmp_path: Path) -> None:
    path = build_tiny_torchscript(tmp_path / "mlp.pt")
    spec = ModelSpec("mlp", "torchscript", str(path), 1, "item", {})
    items = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]
    outputs = []
    for device in ("cpu", "cuda:0"):
        ctx, _ = local_context(items, work_dir=tmp_path, device=device)
        outputs.append(json.loads(run_job(spec, ctx, ModelCache()).output_bytes)["output"])
    assert torch.allclose(torch.tensor(outputs[0]), torch.tensor(outputs[1]), atol=1e-4)


class Hog(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            big = torch.empty([1 << 45], dtype=torch.float32, device=x.device)
            return x + big[0]
        return x * 2


def test_cuda_out_of_memory_fails_the_job_and_frees_memory(tmp_path: Path) -> None:
    path = tmp_path / "hog.pt"
    torch.jit.save(torch.jit.script(Hog()), str(path))
    spec = ModelSpec("hog", "torchscript", str(path), 1, "item", {})
    cache = ModelCache()
    ctx, _ = local_context([[1.0, 1.0]], work_dir=tmp_path, device="cuda")
    with pytest.raises(JobFailed, match="out of memory on cuda"):
        run_job(spec, ctx, cache)
    ctx, _ = local_context([[-1.0, -1.0]], work_dir=tmp_path, device="cuda")
    assert json.loads(run_job(spec, ctx, cache).output_bytes) == {"output": [[-2.0, -2.0]]}


def test_training_on_cuda_resumes(tmp_path: Path) -> None:
    spec = ModelSpec("trainer", "training", None, 1, "second", {})
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(200)]
    data = ("\n".join(rows) + "\n").encode()
    hp = {"epochs": 4, "batch_size": 32, "learning_rate": 0.01, "seed": 2}
    ctx, log = local_context(data, {"hyperparameters": hp}, work_dir=tmp_path, device="cuda")
    log.on_report = lambda _p, m: log.cancelled.set() if (m or "").startswith("epoch 2/") else None
    with pytest.raises(JobCancelled):
        run_job(spec, ctx, ModelCache())
    ctx, _ = local_context(data, {"hyperparameters": hp}, work_dir=tmp_path, device="cuda")
    result = run_job(spec, ctx, ModelCache())
    assert result.summary["resumed_from_epoch"] == 2 and result.summary["epochs_run"] == 2


def test_unknown_cuda_index_fails_clearly(tmp_path: Path) -> None:
    spec = ModelSpec("bench", "benchmark", None, 1, "second", {})
    ctx, _ = local_context(None, {}, work_dir=tmp_path, device=f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(JobFailed, match="does not exist"):
        run_job(spec, ctx, ModelCache())
