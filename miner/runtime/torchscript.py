"""torchscript: a TorchScript model file named in the miner's config.

Input: one item (a nested JSON list of numbers) or a list of items. Which it is follows
the model option ``input_shape`` (the shape of one item) when set: a tensor of that rank
is one item, one rank more is a list of items. Without it, a flat list of numbers is one
item and a deeper list is a list of items along its first dimension. Params:
``batch_size``. Unit: items. Output JSON ``{"output": nested list}`` — the model's output
for the single item, or the list of outputs, one per item.

Job input is never unpickled: it is JSON numbers turned into a tensor. The model file
comes from the operator's config, loaded once with ``torch.jit.load``.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from miner.runtime.base import JobContext, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.params import (
    check_cancelled,
    check_known,
    file_input,
    option_int,
    require_int,
)
from miner.runtime.torchutil import is_oom, json_bytes, oom_as_job_failed, torch_device

PARAMS = ("batch_size",)
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
MAX_RANK = 8
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
}


@dataclass
class LoadedScript:
    module: Any
    device: torch.device
    dtype: torch.dtype
    item_shape: tuple[int, ...] | None
    lock: threading.Lock = field(default_factory=threading.Lock)


class TorchScriptRuntime:
    name = "torchscript"
    default_unit = "item"

    def load(self, spec: ModelSpec, device: str) -> LoadedScript:
        if not spec.path or not Path(spec.path).is_file():
            raise JobFailed(f"model {spec.name}: path {spec.path!r} is not a file")
        dev = torch_device(device)
        dtype_name = spec.options.get("dtype", "float32")
        if dtype_name not in _DTYPES:
            raise JobFailed(f"model {spec.name}: dtype must be one of {', '.join(_DTYPES)}")
        shape = spec.options.get("input_shape")
        item_shape: tuple[int, ...] | None = None
        if shape is not None:
            if not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
            ):
                raise JobFailed(f"model {spec.name}: input_shape must be a list of sizes")
            item_shape = tuple(shape)
        try:
            # TorchScript is deprecated upstream but is the format SPEC names; say it once.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", _JIT_DEPRECATED, DeprecationWarning)
                module = torch.jit.load(spec.path, map_location=dev)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise JobFailed(f"model {spec.name}: not a TorchScript file: {exc}") from None
        module.eval()
        return LoadedScript(module, dev, _DTYPES[dtype_name], item_shape)

    def run(self, model: LoadedScript, spec: ModelSpec, ctx: JobContext) -> RuntimeResult:
        check_known(ctx.params, PARAMS, self.name)
        batch_size = require_int(
            ctx.params, "batch_size", option_int(spec.options, "batch_size", 32), 1, 4096
        )
        max_elements = option_int(spec.options, "max_elements", 10_000_000)
        value = file_input(ctx.input)
        shape = nested_shape(value, max_elements)
        single = _is_single(shape, model.item_shape)
        items = [value] if single else value
        if not single and model.item_shape is not None and tuple(shape[1:]) != model.item_shape:
            raise JobFailed(
                f"each item must have shape {list(model.item_shape)}, got {list(shape[1:])}"
            )
        max_items = option_int(spec.options, "max_items", 100_000)
        if len(items) > max_items:
            raise JobFailed(f"input holds {len(items)} items; at most {max_items} per job")
        try:
            data = torch.tensor(items, dtype=model.dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise JobFailed(f"input is not a tensor of numbers: {exc}") from None

        outputs: list[Any] = []
        with model.lock, oom_as_job_failed(ctx.device), torch.inference_mode():
            for start in range(0, len(items), batch_size):
                check_cancelled(ctx)
                batch = data[start : start + batch_size].to(model.device)
                try:
                    result = model.module(batch)
                except RuntimeError as exc:
                    if is_oom(exc):
                        raise
                    raise JobFailed(
                        f"model rejected input of shape {list(batch.shape)}: {_first_line(exc)}"
                    ) from None
                outputs.extend(_split_batch(result, batch.shape[0]))
                done = start + batch.shape[0]
                ctx.report_progress(min(99, 100 * done // len(items)), f"{done}/{len(items)}")
        check_cancelled(ctx)
        body = {"output": outputs[0] if single else outputs}
        ctx.report_progress(100, f"{len(items)} items")
        return RuntimeResult(
            output_bytes=json_bytes(body),
            content_type="application/json",
            filename="output.json",
            units=len(items),
            summary={"items": len(items), "input_shape": shape, "batch_size": batch_size},
        )


def nested_shape(value: Any, max_elements: int) -> list[int]:
    """Shape of a rectangular nested list of numbers, checked without building a tensor."""
    shape: list[int] = []
    level: list[Any] = [value]
    while level and isinstance(level[0], list):
        size = len(level[0])
        if size == 0:
            raise JobFailed("input holds an empty list")
        if any(not isinstance(v, list) or len(v) != size for v in level):
            raise JobFailed(f"input is not rectangular at depth {len(shape)}")
        shape.append(size)
        if len(shape) > MAX_RANK:
            raise JobFailed(f"input has more than {MAX_RANK} dimensions")
        if math.prod(shape) > max_elements:
            raise JobFailed(f"input holds more than {max_elements} numbers")
        level = [v for sub in level for v in sub]
    if not shape:
        raise JobFailed("input must be a nested JSON list of numbers, or a list of them")
    for v in level:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise JobFailed(f"input holds {v!r}; only numbers are allowed")
    return shape


def _is_single(shape: list[int], item_shape: tuple[int, ...] | None) -> bool:
    if item_shape is None:
        return len(shape) == 1
    if tuple(shape) == item_shape:
        return True
    if len(shape) == len(item_shape) + 1:
        return False
    raise JobFailed(
        f"input shape {shape} is neither one item of shape {list(item_shape)} nor a list of them"
    )


def _split_batch(result: Any, n: int) -> list[Any]:
    """Per-item JSON outputs of a batch result (a tensor, or a tuple/list of tensors)."""
    if isinstance(result, torch.Tensor):
        if result.dim() == 0 or result.shape[0] != n:
            raise JobFailed(f"model output of shape {list(result.shape)} has no batch dimension")
        out = result.detach().cpu()
        values: list[Any] = (out.float() if out.is_floating_point() else out).tolist()
        return values
    if isinstance(result, (tuple, list)) and result:
        parts = [_split_batch(r, n) for r in result]
        return [list(group) for group in zip(*parts, strict=True)]
    raise JobFailed(f"model output of type {type(result).__name__} cannot be returned as JSON")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # TorchScript errors put the Python-level reason last ("mat1 and mat2 shapes ...").
    last = lines[-1].removeprefix("RuntimeError: ") if lines else type(exc).__name__
    return last[:300]


RUNTIME = TorchScriptRuntime()
