"""Runtime registry and model cache: lazy imports, LRU by bytes, out-of-memory handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from miner.runtime.base import DEFAULT_UNITS, RUNTIME_NAMES, JobFailed, ModelSpec, default_unit
from miner.runtime.registry import ModelCache, approx_bytes, get_runtime, run_job
from miner.runtime.tiny import local_context

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.(script|save)` is deprecated:DeprecationWarning"
)


def test_base_and_registry_do_not_import_torch() -> None:
    code = (
        "import sys, miner.runtime.base, miner.runtime.registry, miner.runtime.params\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_runtime_resolves_with_its_default_unit() -> None:
    for name in RUNTIME_NAMES:
        runtime = get_runtime(name)
        assert runtime.name == name
        assert runtime.default_unit == DEFAULT_UNITS[name] == default_unit(name)
        assert get_runtime(name) is runtime  # one instance per runtime
    assert DEFAULT_UNITS["text-generation"] == "token"
    assert DEFAULT_UNITS["embedding"] == DEFAULT_UNITS["torchscript"] == "item"
    assert DEFAULT_UNITS["training"] == DEFAULT_UNITS["benchmark"] == "second"
    assert DEFAULT_UNITS["echo"] == "byte"


def test_unknown_runtime_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown runtime 'llm'"):
        get_runtime("llm")
    with pytest.raises(ValueError, match="unknown runtime"):
        default_unit("llm")


pytest.importorskip("torch")

import torch  # noqa: E402
from torch import nn  # noqa: E402


class Wide(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


class Hog(nn.Module):
    """Asks for an impossible allocation when its input sums above zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            big = torch.empty([1 << 60], dtype=torch.float32)
            return x + big[0]
        return x * 2


def _script(path: Path, module: nn.Module) -> ModelSpec:
    torch.jit.save(torch.jit.script(module), str(path))
    return ModelSpec(path.stem, "torchscript", str(path), 1, "item", {})


def test_cache_reuses_models_and_evicts_least_recently_used(tmp_path: Path) -> None:
    specs = [_script(tmp_path / f"m{i}.pt", Wide(128)) for i in range(3)]
    one_model = 128 * 128 * 4 + 128 * 4
    cache = ModelCache(max_bytes=2 * one_model + 100)
    a = cache.get(specs[0], "cpu")
    assert approx_bytes(a) == one_model
    cache.get(specs[1], "cpu")
    assert cache.get(specs[0], "cpu") is a and cache.loads == 2  # a hit, now most recent
    cache.get(specs[2], "cpu")  # over the bound: m1 was least recently used
    assert cache.names() == ["m0", "m2"] and cache.loads == 3
    assert cache.total_bytes() <= cache.max_bytes
    cache.get(specs[1], "cpu")
    assert cache.names() == ["m2", "m1"] and cache.loads == 4


def test_model_larger_than_the_bound_is_still_served(tmp_path: Path) -> None:
    spec = _script(tmp_path / "big.pt", Wide(64))
    cache = ModelCache(max_bytes=10)
    ctx, _ = local_context([[0.0] * 64], work_dir=tmp_path)
    assert run_job(spec, ctx, cache).units == 1
    assert cache.names() == ["big"]


def test_out_of_memory_fails_the_job_and_the_miner_keeps_serving(tmp_path: Path) -> None:
    spec = _script(tmp_path / "hog.pt", Hog())
    cache = ModelCache()
    ctx, _ = local_context([[1.0, 2.0]], work_dir=tmp_path)
    with pytest.raises(JobFailed, match="out of memory on cpu"):
        run_job(spec, ctx, cache)
    ctx, _ = local_context([[-1.0, -2.0]], work_dir=tmp_path)
    result = run_job(spec, ctx, cache)
    assert json.loads(result.output_bytes) == {"output": [[-2.0, -4.0]]}
    assert cache.loads == 1


def test_bad_cache_bound_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        ModelCache(max_bytes=0)
