"""Per-epoch checkpoints of the training runtime, kept in the job's work dir.

A job re-assigned to this miner (it went down, or gave the lease back) resumes after the
last finished epoch. The file holds only tensors and plain values and is read back with
``torch.load(weights_only=True)``; a fingerprint of the data and hyperparameters keeps a
checkpoint of other training from ever being resumed.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT = "training-checkpoint.pt"


def save_checkpoint(
    work_dir: Path,
    fingerprint: str,
    epoch: int,
    history: list[dict[str, Any]],
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Write the checkpoint next to the old one, then swap: a crash never leaves half a file."""
    work_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "history": history,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
    }
    tmp = work_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, work_dir / CHECKPOINT)


def resume(
    work_dir: Path,
    fingerprint: str,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    dev: torch.device,
) -> tuple[int, list[dict[str, Any]]]:
    """(epochs already done, their history) from this job's checkpoint, else (0, [])."""
    path = work_dir / CHECKPOINT
    if not path.is_file():
        return 0, []
    try:
        # weights_only: even our own checkpoint file is never unpickled as code.
        state = torch.load(path, map_location=dev, weights_only=True)
        if state.get("fingerprint") != fingerprint:
            return 0, []
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["epoch"]), list(state["history"])
    except (
        OSError,
        RuntimeError,
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        EOFError,
        pickle.UnpicklingError,  # weights_only refused something in the file
    ):
        # An unreadable checkpoint costs a restart, never a failed job.
        return 0, []
