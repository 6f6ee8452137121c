"""torchscript runtime on CPU: outputs match the same module run directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

# TorchScript is deprecated upstream (torch 2.13 warns on script/save); SPEC names it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.(script|save)` is deprecated:DeprecationWarning"
)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from miner.runtime.base import JobCancelled, JobFailed, ModelSpec  # noqa: E402
from miner.runtime.registry import ModelCache, run_job  # noqa: E402
from miner.runtime.tiny import ProgressLog, local_context  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.tanh(self.fc1(x)))
        return out


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x).mean(dim=(2, 3))
        return out


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture
def spec(tmp_path: Path, net: nn.Module) -> ModelSpec:
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    return ModelSpec("net", "torchscript", str(path), 1, "item", {})


def infer(spec: ModelSpec, tmp_path: Path, job_input: Any, **params: Any) -> tuple[Any, int]:
    ctx, _ = local_context(job_input, params, work_dir=tmp_path)
    result = run_job(spec, ctx, ModelCache())
    assert result.content_type == "application/json"
    return json.loads(result.output_bytes)["output"], result.units


def test_list_of_items_matches_direct_run(spec: ModelSpec, net: nn.Module, tmp_path: Path) -> None:
    items = [[float(i), 0.5, -1.0, i / 3] for i in range(7)]
    output, units = infer(spec, tmp_path, items, batch_size=3)
    assert units == 7
    with torch.no_grad():
        expected = net(torch.tensor(items))
    assert torch.allclose(torch.tensor(output), expected, atol=1e-6)


def test_single_item_gives_one_output(spec: ModelSpec, net: nn.Module, tmp_path: Path) -> None:
    output, units = infer(spec, tmp_path, [1, 2, 3, 4])
    assert units == 1
    with torch.no_grad():
        expected = net(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))[0]
    assert torch.allclose(torch.tensor(output), expected, atol=1e-6)


def test_file_input_holds_json(spec: ModelSpec, tmp_path: Path) -> None:
    output, units = infer(spec, tmp_path, json.dumps([[0, 0, 0, 0], [1, 1, 1, 1]]).encode())
    assert units == 2 and len(output) == 2 and len(output[0]) == 2


def test_input_shape_option_for_multi_dimensional_items(tmp_path: Path) -> None:
    torch.manual_seed(1)
    conv = Conv().eval()
    path = tmp_path / "conv.pt"
    torch.jit.save(torch.jit.script(conv), str(path))
    spec = ModelSpec("conv", "torchscript", str(path), 1, "item", {"input_shape": [1, 5, 5]})
    image = [[[float((r * 5 + c) % 7) for c in range(5)] for r in range(5)]]
    one, units = infer(spec, tmp_path, image)
    assert units == 1 and len(one) == 2
    many, units = infer(spec, tmp_path, [image, image, image])
    assert units == 3 and many[1] == pytest.approx(one, abs=1e-6)
    with torch.no_grad():
        expected = conv(torch.tensor([image]))[0]
    assert torch.allclose(torch.tensor(one), expected, atol=1e-6)
    with pytest.raises(JobFailed, match=r"neither one item of shape \[1, 5, 5\]"):
        infer(spec, tmp_path, [[1.0, 2.0]])


@pytest.mark.parametrize(
    ("job_input", "params", "message"),
    [
        ([[1, 2, 3]], {}, "model rejected input of shape [1, 3]: mat1 and mat2 shapes"),
        ([[1, 2, 3, 4], [1, 2]], {}, "not rectangular"),
        ([[1, 2, "x", 4]], {}, "only numbers are allowed"),
        ([[1, 2, True, 4]], {}, "only numbers are allowed"),
        ("hello", {}, "nested JSON list of numbers"),
        (7, {}, "nested JSON list of numbers"),
        ([], {}, "empty list"),
        ([[1, 2, 3, 4]], {"batch": 4}, "unknown param(s) for torchscript: batch"),
        ([[1, 2, 3, 4]], {"batch_size": 0}, "batch_size must be between 1 and 4096"),
        (b"\x80\x81 not json", {}, "neither JSON nor UTF-8"),
    ],
)
def test_bad_inputs_fail_clearly(
    spec: ModelSpec, tmp_path: Path, job_input: Any, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobFailed) as info:
        infer(spec, tmp_path, job_input, **params)
    assert message in str(info.value)


def test_too_many_numbers_fail_before_any_tensor(tmp_path: Path, spec: ModelSpec) -> None:
    small = ModelSpec(spec.name, spec.runtime, spec.path, 1, "item", {"max_elements": 100})
    with pytest.raises(JobFailed, match="more than 100 numbers"):
        infer(small, tmp_path, [[0.0] * 4] * 26)


def test_cancel_between_batches(spec: ModelSpec, tmp_path: Path) -> None:
    log = ProgressLog(cancel_at=1)
    ctx, _ = local_context([[0, 0, 0, 0]] * 10, {"batch_size": 2}, work_dir=tmp_path, progress=log)
    with pytest.raises(JobCancelled):
        run_job(spec, ctx, ModelCache())
    assert len(log.reports) == 1


def test_not_a_torchscript_file_fails_the_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip archive")
    spec = ModelSpec("bad", "torchscript", str(bad), 1, "item", {})
    ctx, _ = local_context([1, 2, 3, 4], work_dir=tmp_path)
    with pytest.raises(JobFailed, match="not a TorchScript file"):
        run_job(spec, ctx, ModelCache())
