"""Pruning of per-job scratch dirs (checkpoints) that no job can come back for.

A job's dir is removed at once when its result is acknowledged. A job that was cancelled,
failed or lost its lease keeps its dir, because a re-queued job may be assigned here again
and resume from its checkpoint. Such a dir is useless once the job's deadline has passed.
The coordinator sets the deadline when the job is created, so it is no later than the time
the assignment arrived plus its `timeout_s`. For dirs that an earlier run of the daemon
left behind, the deadline is unknown. They are removed once untouched for longer than any
job may live (the protocol's longest timeout), because the job was created before the dir
was last written.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

from protocol.limits import MAX_TIMEOUT_S


def last_touched(path: Path) -> float:
    """The newest modification time of a dir and of what it holds directly."""
    newest = path.stat().st_mtime
    for child in path.iterdir():
        try:
            newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
        except FileNotFoundError:  # removed while we looked: the dir's mtime counts it
            continue
    return newest


def stale_job_dirs(
    work_dir: Path, running: Collection[str], expires: Mapping[str, float], now: float
) -> list[Path]:
    """The scratch dirs under `work_dir` whose job can no longer come back: not running
    here, and past `expires[job_id]` (wall-clock seconds), or, for a job not in
    `expires`, untouched for longer than MAX_TIMEOUT_S."""
    if not work_dir.is_dir():
        return []
    stale: list[Path] = []
    for child in sorted(work_dir.iterdir()):
        if child.name in running or child.is_symlink() or not child.is_dir():
            continue
        deadline = expires.get(child.name)
        if deadline is None:
            try:
                deadline = last_touched(child) + MAX_TIMEOUT_S
            except FileNotFoundError:
                continue
        if now >= deadline:
            stale.append(child)
    return stale


def remove_stale_job_dirs(
    work_dir: Path, running: Collection[str], expires: Mapping[str, float], now: float
) -> list[str]:
    """Remove what `stale_job_dirs` finds (blocking: call it off the event loop); the job
    ids whose dirs went."""
    removed: list[str] = []
    for path in stale_job_dirs(work_dir, running, expires, now):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path.name)
    return removed


__all__ = ["last_touched", "remove_stale_job_dirs", "stale_job_dirs"]
