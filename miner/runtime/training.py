"""training: train a built-in architecture on an uploaded dataset.

Architectures (``training_models``): ``mlp`` and ``cnn`` (classification or regression on
CSV/JSON tables or images), ``transformer`` (a byte-level causal LM on text). The
architecture is the model option ``architecture`` or else the ``architecture`` param.
Hyperparameters come as ``params.hyperparameters`` (an object) or as top-level params:
``learning_rate``, ``batch_size``, ``epochs``, ``seed`` and the sizes listed in ``HYPER``.

Each finished epoch is reported (``epoch 3/10 loss 0.1234``) and checkpointed into
``ctx.work_dir``; a job re-assigned with the same work dir resumes after the last finished
epoch, and because shuffling is seeded per epoch the resumed run ends with the same weights
as an uninterrupted one. The output is the trained ``state_dict`` as safetensors
(architecture, config, labels and metrics in its metadata). Unit: device-seconds (ceil).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from miner.runtime import training_data as data
from miner.runtime.base import JobContext, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.params import (
    check_cancelled,
    check_known,
    get_choice,
    get_float,
    option_int,
    require_int,
)
from miner.runtime.torchutil import oom_as_job_failed, seeded, torch_device
from miner.runtime.training_checkpoint import resume, save_checkpoint
from miner.runtime.training_models import ARCHITECTURES, build_model

HYPER = (
    "learning_rate",
    "batch_size",
    "epochs",
    "seed",
    "optimizer",
    "weight_decay",
    "validation_split",
    "hidden_size",
    "layers",
    "channels",
    "heads",
    "block_size",
    "image_shape",
)
PARAMS = ("architecture", "hyperparameters", "target", "task", *HYPER)


@dataclass(frozen=True)
class Prepared:
    """Tensors and facts for one training job."""

    x: torch.Tensor
    y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    task: str  # classification | regression | language-model
    config: dict[str, Any]  # what build_model needs
    labels: list[Any]


class TrainingRuntime:
    name = "training"
    default_unit = "second"

    def load(self, spec: ModelSpec, device: str) -> torch.device:
        # Nothing to load: the model is built per job. Fail early on a bad config entry.
        arch = spec.options.get("architecture")
        if arch is not None and arch not in ARCHITECTURES:
            raise JobFailed(f"model {spec.name}: architecture must be one of {ARCHITECTURES}")
        return torch_device(device)

    def run(self, model: torch.device, spec: ModelSpec, ctx: JobContext) -> RuntimeResult:
        started = time.monotonic()
        check_known(ctx.params, PARAMS, self.name)
        hp = _hyperparameters(ctx.params)
        arch = _architecture(spec, ctx.params)
        opts = spec.options
        epochs = require_int(hp, "epochs", 5, 1, option_int(opts, "max_epochs", 1000))
        batch_size = require_int(hp, "batch_size", 32, 1, 65536)
        lr = get_float(hp, "learning_rate", 1e-3, 1e-8, 10.0)
        seed = require_int(hp, "seed", 0, 0, 2**31 - 1)
        optimizer_name = get_choice(hp, "optimizer", "adam", ("adam", "adamw", "sgd"))
        weight_decay = get_float(hp, "weight_decay", 0.0, 0.0, 1.0)

        raw = data.decode(ctx.input, option_int(opts, "max_dataset_bytes", 64 * 2**20))
        prep = _prepare(arch, raw, hp, ctx.params, option_int(opts, "max_rows", 1_000_000))
        fingerprint = _fingerprint(arch, prep, hp, ctx.input)
        dev = model

        with oom_as_job_failed(ctx.device):
            with seeded(seed, dev):
                net = build_model(arch, prep.config)
            n_params = sum(p.numel() for p in net.parameters())
            if n_params > option_int(opts, "max_parameters", 50_000_000):
                raise JobFailed(f"model would have {n_params} parameters; too large for this miner")
            net.to(dev)
            optimizer = _optimizer(optimizer_name, net, lr, weight_decay)
            start, history = resume(ctx.work_dir, fingerprint, net, optimizer, dev)
            if start:
                ctx.report_progress(100 * start // epochs, f"resumed after epoch {start}")
            x, y = prep.x.to(dev), prep.y.to(dev)
            for epoch in range(start, epochs):
                loss = _epoch(net, optimizer, prep.task, x, y, batch_size, seed, epoch, ctx)
                record = {"epoch": epoch + 1, "loss": round(loss, 6)}
                record.update(_evaluate(net, prep, dev, batch_size))
                history.append(record)
                save_checkpoint(ctx.work_dir, fingerprint, epoch + 1, history, net, optimizer)
                ctx.report_progress(
                    min(99, 100 * (epoch + 1) // epochs),
                    f"epoch {epoch + 1}/{epochs} loss {loss:.4f}",
                )
            check_cancelled(ctx)

        final = history[-1] if history else {}
        metadata = {
            "format": "ait-training/1",
            "architecture": arch,
            "config": json.dumps(prep.config),
            "task": prep.task,
            "labels": json.dumps(prep.labels),
            "metrics": json.dumps(final),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        weights = safetensors_save(state, metadata=metadata)
        seconds = max(1, math.ceil(time.monotonic() - started))
        ctx.report_progress(100, f"trained {epochs} epochs")
        return RuntimeResult(
            output_bytes=weights,
            content_type="application/octet-stream",
            filename="model.safetensors",
            units=seconds,
            summary={
                "architecture": arch,
                "config": prep.config,
                "task": prep.task,
                # The summary travels in the result message (16 KiB at most): all labels
                # are in the weights' metadata, the first 50 here.
                "labels": prep.labels[:50],
                "classes": len(prep.labels),
                "parameters": n_params,
                "epochs": epochs,
                "epochs_run": epochs - start,
                "resumed_from_epoch": start,
                "metrics": final,
                "history": history[-20:],
                "device_seconds": seconds,
            },
        )


def _hyperparameters(params: Mapping[str, Any]) -> dict[str, Any]:
    nested = params.get("hyperparameters") or {}
    if not isinstance(nested, Mapping):
        raise JobFailed("param hyperparameters must be a JSON object")
    check_known(nested, HYPER, "training hyperparameters")
    flat = {k: params[k] for k in HYPER if k in params}
    clash = sorted(set(flat) & set(nested))
    if clash:
        raise JobFailed(f"hyperparameter(s) given twice: {', '.join(clash)}")
    return {**nested, **flat}


def _architecture(spec: ModelSpec, params: Mapping[str, Any]) -> str:
    fixed = spec.options.get("architecture")
    asked = params.get("architecture")
    if fixed is not None and asked is not None and asked != fixed:
        raise JobFailed(f"model {spec.name} trains {fixed!r} only, not {asked!r}")
    arch = fixed or asked or "mlp"
    if arch not in ARCHITECTURES:
        raise JobFailed(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    return str(arch)


def _prepare(
    arch: str, raw: Any, hp: Mapping[str, Any], params: Mapping[str, Any], max_rows: int
) -> Prepared:
    if arch == "transformer":
        return _prepare_lm(raw, hp)
    target = params.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (str, int))):
        raise JobFailed("param target must be a column name or index")
    task = params.get("task")
    if task is not None and task not in ("classification", "regression"):
        raise JobFailed("param task must be classification or regression")
    table = data.tabular(raw, target, task, max_rows)
    outputs = len(table.labels) if table.task == "classification" else int(table.y.shape[1])
    x = table.x
    config: dict[str, Any]
    if arch == "mlp":
        config = {
            "inputs": math.prod(x.shape[1:]),
            "outputs": outputs,
            "hidden_size": require_int(hp, "hidden_size", 64, 1, 8192),
            "layers": require_int(hp, "layers", 2, 1, 16),
        }
    else:
        x = _images(x, hp.get("image_shape"))
        config = {
            "image_shape": list(x.shape[1:]),
            "outputs": outputs,
            "channels": require_int(hp, "channels", 16, 1, 512),
        }
    split = get_float(hp, "validation_split", 0.0, 0.0, 0.5)
    n_val = int(len(x) * split)
    if split and (n_val < 1 or n_val >= len(x)):
        raise JobFailed(f"validation_split {split} leaves no validation or no training rows")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y = x[order], table.y[order]
    return Prepared(x[n_val:], y[n_val:], x[:n_val], y[:n_val], table.task, config, table.labels)


def _images(x: torch.Tensor, image_shape: Any) -> torch.Tensor:
    """Rows as (N, C, H, W): from 4-D or 3-D data, ``image_shape``, or square flat rows."""
    if image_shape is not None:
        if not (
            isinstance(image_shape, list)
            and len(image_shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in image_shape)
        ):
            raise JobFailed("hyperparameter image_shape must be [channels, height, width]")
        if math.prod(image_shape) != math.prod(x.shape[1:]):
            raise JobFailed(
                f"image_shape {image_shape} does not match rows of {math.prod(x.shape[1:])} values"
            )
        return x.reshape(len(x), *image_shape)
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)
    side = math.isqrt(x.shape[1])
    if x.dim() == 2 and side * side == x.shape[1]:
        return x.reshape(len(x), 1, side, side)
    raise JobFailed("cnn needs images: give hyperparameter image_shape [channels, height, width]")


def _prepare_lm(raw: Any, hp: Mapping[str, Any]) -> Prepared:
    block = require_int(hp, "block_size", 32, 2, 1024)
    hidden = require_int(hp, "hidden_size", 64, 8, 2048)
    heads = require_int(hp, "heads", 4, 1, 64)
    if hidden % heads:
        raise JobFailed(f"hidden_size {hidden} must be a multiple of heads {heads}")
    text = data.text_bytes(raw, 64 * 2**20)
    if len(text) < block + 1:
        raise JobFailed(
            f"dataset text is {len(text)} bytes; block_size {block} needs at least {block + 1}"
        )
    ids = torch.tensor(list(text), dtype=torch.int64)
    windows = (len(ids) - 1) // block
    x = ids[: windows * block].reshape(windows, block)
    y = ids[1 : windows * block + 1].reshape(windows, block)
    config = {
        "block_size": block,
        "hidden_size": hidden,
        "layers": require_int(hp, "layers", 2, 1, 24),
        "heads": heads,
    }
    empty = x[:0]
    return Prepared(x, y, empty, y[:0], "language-model", config, [])


def _fingerprint(arch: str, prep: Prepared, hp: Mapping[str, Any], raw: Any) -> str:
    """Identifies the job's training so a checkpoint of another job is never resumed."""
    h = hashlib.sha256()
    blob = raw if isinstance(raw, (bytes, bytearray)) else json.dumps(raw, sort_keys=True).encode()
    h.update(hashlib.sha256(blob).digest())
    h.update(json.dumps([arch, prep.config, dict(hp)], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _optimizer(name: str, net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)


def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        return nn.functional.mse_loss(out, y)
    if task == "language-model":
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return nn.functional.cross_entropy(out, y)


def _epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: str,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    seed: int,
    epoch: int,
    ctx: JobContext,
) -> float:
    """One pass over the data in an order seeded by (seed, epoch); the mean loss."""
    net.train()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    order = order.to(x.device)
    # The loss sum stays on the device: reading it back each step would stall a GPU.
    total = torch.zeros((), device=x.device)
    for start in range(0, len(x), batch_size):
        check_cancelled(ctx)
        idx = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(task, net(x[idx]), y[idx])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.detach() * len(idx)
    mean = float(total) / len(x)
    if not math.isfinite(mean):
        raise JobFailed(f"loss diverged in epoch {epoch + 1}; lower the learning_rate")
    return mean


@torch.no_grad()
def _evaluate(
    net: nn.Module, prep: Prepared, dev: torch.device, batch_size: int
) -> dict[str, float]:
    """Metrics on the validation rows, or on the training rows when none were held out."""
    net.eval()
    held_out = len(prep.val_x) > 0
    x, y = (prep.val_x, prep.val_y) if held_out else (prep.x, prep.y)
    prefix = "val_" if held_out else "train_"
    total, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
        out = net(xb)
        total += float(_loss(prep.task, out, yb)) * len(xb)
        if prep.task == "classification":
            correct += int((out.argmax(dim=1) == yb).sum())
    mean = total / len(x)
    metrics = {f"{prefix}loss": round(mean, 6)}
    if prep.task == "classification":
        metrics[f"{prefix}accuracy"] = round(correct / len(x), 6)
    elif prep.task == "language-model":
        metrics[f"{prefix}bits_per_byte"] = round(mean / math.log(2), 6)
    return metrics


RUNTIME = TrainingRuntime()
