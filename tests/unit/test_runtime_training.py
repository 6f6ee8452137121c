"""training runtime on CPU: real training of the built-in architectures on small datasets."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("safetensors")

import torch
from safetensors import safe_open
from safetensors.torch import load as safetensors_load

from miner.runtime.base import JobCancelled, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.registry import ModelCache, run_job
from miner.runtime.tiny import ProgressLog, local_context
from miner.runtime.training_models import build_model

SPEC = ModelSpec("trainer", "training", None, 100, "second", {})


def blobs_csv(n: int = 160, seed: int = 3) -> bytes:
    """Two separable clusters: label = which side of the diagonal."""
    rng = random.Random(seed)
    lines = ["a,b,label"]
    for _ in range(n):
        cls = rng.randrange(2)
        cx = 2.0 if cls else -2.0
        lines.append(f"{cx + rng.gauss(0, 0.7):.4f},{cx + rng.gauss(0, 0.7):.4f},{cls}")
    return ("\n".join(lines) + "\n").encode()


def train(
    tmp_path: Path, dataset: Any, progress: ProgressLog | None = None, **params: Any
) -> tuple[RuntimeResult, ProgressLog]:
    ctx, log = local_context(dataset, params, work_dir=tmp_path, progress=progress)
    return run_job(SPEC, ctx, ModelCache()), log


def load_result(result: RuntimeResult, tmp_path: Path) -> tuple[torch.nn.Module, dict[str, str]]:
    path = tmp_path / "model.safetensors"
    path.write_bytes(result.output_bytes)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    model = build_model(meta["architecture"], json.loads(meta["config"]))
    model.load_state_dict(safetensors_load(result.output_bytes))
    return model.eval(), meta


def test_mlp_learns_a_csv_classification(tmp_path: Path) -> None:
    hp = {"learning_rate": 0.05, "batch_size": 16, "epochs": 6, "seed": 1}
    result, log = train(tmp_path, blobs_csv(), architecture="mlp", hyperparameters=hp)
    assert result.content_type == "application/octet-stream"
    assert result.filename == "model.safetensors"
    assert result.units >= 1
    summary = result.summary
    assert summary["epochs_run"] == 6 and summary["task"] == "classification"
    assert summary["labels"] == [0, 1]
    assert summary["metrics"]["train_accuracy"] > 0.9
    epochs = [m for _, m in log.reports if m and m.startswith("epoch ")]
    assert len(epochs) == 6 and epochs[0].startswith("epoch 1/6 loss ")
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0]
    # The weights are the real trained model: rebuilt from its metadata it classifies well.
    model, meta = load_result(result, tmp_path)
    assert meta["architecture"] == "mlp"
    with torch.no_grad():
        pred = model(torch.tensor([[2.0, 2.0], [-2.0, -2.0]])).argmax(1).tolist()
    assert pred == [1, 0]


def test_inline_csv_string_is_a_dataset(tmp_path: Path) -> None:
    text = blobs_csv(40).decode()
    result, _ = train(tmp_path, text, hyperparameters={"epochs": 3, "learning_rate": 0.05})
    assert result.summary["task"] == "classification" and result.summary["epochs_run"] == 3


def test_mlp_regression_on_json_xy_with_validation(tmp_path: Path) -> None:
    xs = [[i / 20] for i in range(-20, 21)]
    ys = [2 * x[0] + 0.5 for x in xs]
    hp = {"learning_rate": 0.02, "epochs": 30, "batch_size": 8, "validation_split": 0.2}
    result, _ = train(tmp_path, {"x": xs, "y": ys}, hyperparameters=hp)
    assert result.summary["task"] == "regression"
    assert result.summary["metrics"]["val_loss"] < 0.05
    model, _ = load_result(result, tmp_path)
    with torch.no_grad():
        assert abs(float(model(torch.tensor([[0.5]]))) - 1.5) < 0.3


def test_cnn_learns_left_versus_right_images(tmp_path: Path) -> None:
    rng = random.Random(0)
    xs, ys = [], []
    for _ in range(64):
        left = rng.randrange(2)
        img = [
            [rng.random() * 0.2 + (1.0 if (c < 3) == bool(left) else 0.0) for c in range(6)]
            for _ in range(6)
        ]
        xs.append(img)
        ys.append("left" if left else "right")
    hp = {"learning_rate": 0.02, "epochs": 8, "batch_size": 16, "channels": 4}
    result, _ = train(
        tmp_path, json.dumps({"x": xs, "y": ys}).encode(), architecture="cnn", hyperparameters=hp
    )
    assert result.summary["config"]["image_shape"] == [1, 6, 6]
    assert result.summary["labels"] == ["left", "right"]
    assert result.summary["metrics"]["train_accuracy"] > 0.9


def test_transformer_lm_loss_falls_on_text(tmp_path: Path) -> None:
    text = "the miner trains a tiny model. " * 12
    hp = {
        "learning_rate": 0.01,
        "epochs": 4,
        "batch_size": 8,
        "block_size": 16,
        "hidden_size": 32,
        "heads": 2,
        "layers": 1,
    }
    result, _ = train(tmp_path, text.encode(), architecture="transformer", hyperparameters=hp)
    history = result.summary["history"]
    assert result.summary["task"] == "language-model"
    assert history[-1]["train_loss"] < history[0]["train_loss"] < 6.0
    model, _ = load_result(result, tmp_path)
    with torch.no_grad():
        logits = model(torch.tensor([list(b"the miner trains")]))
    assert logits.shape == (1, 16, 256)


def test_cancel_then_resume_runs_fewer_epochs_and_matches(tmp_path: Path) -> None:
    dataset = blobs_csv(96)
    hp = {"learning_rate": 0.05, "batch_size": 16, "epochs": 5, "seed": 9}
    whole, _ = train(tmp_path / "whole", dataset, hyperparameters=hp)

    work = tmp_path / "job"
    first = ProgressLog()

    def stop_after_epoch_2(_percent: int, message: str | None) -> None:
        if (message or "").startswith("epoch 2/"):
            first.cancelled.set()

    first.on_report = stop_after_epoch_2
    with pytest.raises(JobCancelled):
        train(work, dataset, progress=first, hyperparameters=hp)
    assert sum(1 for _, m in first.reports if m and m.startswith("epoch")) == 2

    resumed, log = train(work, dataset, hyperparameters=hp)
    assert resumed.summary["resumed_from_epoch"] == 2
    assert resumed.summary["epochs_run"] == 3
    epochs = [m for _, m in log.reports if m and m.startswith("epoch")]
    assert epochs[0].startswith("epoch 3/5") and len(epochs) == 3
    assert len(resumed.summary["history"]) == 5
    # Seeded per-epoch shuffling + restored optimizer state: same weights as one run.
    a, b = safetensors_load(whole.output_bytes), safetensors_load(resumed.output_bytes)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_other_training_is_not_resumed(tmp_path: Path) -> None:
    hp = {"epochs": 2, "learning_rate": 0.05}
    train(tmp_path, blobs_csv(48), hyperparameters=hp)
    again, _ = train(tmp_path, blobs_csv(48), hyperparameters={**hp, "seed": 5})
    assert again.summary["resumed_from_epoch"] == 0 and again.summary["epochs_run"] == 2


class Payload:
    """Something a weights-only load must refuse to rebuild."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("unpickled!",))


@pytest.mark.parametrize("content", ["garbage", "pickle-bomb", "empty"])
def test_unreadable_checkpoint_costs_a_restart(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from miner.runtime.training_checkpoint import CHECKPOINT

    path = tmp_path / CHECKPOINT
    if content == "garbage":
        path.write_bytes(b"\x00not a checkpoint")
    elif content == "pickle-bomb":
        torch.save({"fingerprint": "x", "epoch": Payload()}, path)
    else:
        path.write_bytes(b"")
    result, _ = train(tmp_path, blobs_csv(32), hyperparameters={"epochs": 2})
    assert result.summary["resumed_from_epoch"] == 0 and result.summary["epochs_run"] == 2
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("dataset", "params", "message"),
    [
        (b"a,b,label\n1,2,0\n3,x,1\n", {}, "row 2, column 'b': expected a number"),
        (b"a,b,label\n1,2,0\n3,4\n", {}, "CSV line 3 has 2 cells"),
        (b"a,label\n1,0\n2,0\n", {}, "at least two distinct target values"),
        (pickle.dumps({"x": [[1]], "y": [0]}), {}, "dataset must be UTF-8 CSV or JSON"),
        (None, {}, "training needs a dataset"),
        (b"a,label\n1,0\n2,1\n", {"hyperparameters": {"lr": 1}}, "unknown param(s)"),
        (b"a,label\n1,0\n2,1\n", {"epochs": 100000}, "epochs must be between 1 and 1000"),
        (b"a,label\n1,0\n2,1\n", {"epochs": 2, "hyperparameters": {"epochs": 3}}, "given twice"),
        (b"a,label\n1,0\n2,1\n", {"architecture": "resnet"}, "architecture must be one of"),
        (b"a,label\n1,0\n2,1\n", {"target": "nope"}, "target column 'nope' not in"),
        (b"a,b,c,label\n1,2,3,0\n2,3,4,1\n", {"architecture": "cnn"}, "image_shape"),
        (b"short", {"architecture": "transformer"}, "needs at least 33"),
        ({"x": [[1], [2]], "y": [0]}, {}, '2 "x" rows but 1 "y"'),
        (b"a,label\n1,0\n2,1\n", {"hidden_size": 100000}, "hidden_size must be between"),
        (
            {"x": [[1.0], [2.0], [3.0]], "y": [1e20, 2e20, 3e20]},  # squares overflow
            {"task": "regression", "optimizer": "sgd", "learning_rate": 10, "epochs": 3},
            "loss diverged in epoch 1; lower the learning_rate",
        ),
    ],
)
def test_bad_training_jobs_fail_clearly(
    tmp_path: Path, dataset: Any, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(JobFailed) as info:
        train(tmp_path, dataset, **params)
    assert message in str(info.value)


def test_model_option_fixes_the_architecture(tmp_path: Path) -> None:
    spec = ModelSpec("cnn-trainer", "training", None, 1, "second", {"architecture": "cnn"})
    ctx, _ = local_context(b"a,label\n1,0\n2,1\n", {"architecture": "mlp"}, work_dir=tmp_path)
    with pytest.raises(JobFailed, match="trains 'cnn' only"):
        run_job(spec, ctx, ModelCache())
