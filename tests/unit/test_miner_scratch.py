"""Which scratch dirs the miner prunes: only those no assignment can bring back."""

from __future__ import annotations

import os
from pathlib import Path

from miner.scratch import last_touched, remove_stale_job_dirs, stale_job_dirs
from protocol.limits import MAX_TIMEOUT_S

NOW = 2_000_000_000.0  # wall-clock seconds, past every mtime the test sets


def _dir(work: Path, name: str, touched: float, *, file_touched: float | None = None) -> Path:
    path = work / name
    path.mkdir(parents=True)
    if file_touched is not None:
        checkpoint = path / "checkpoint.pt"
        checkpoint.write_bytes(b"state")
        os.utime(checkpoint, (file_touched, file_touched))
    os.utime(path, (touched, touched))
    return path


def test_a_dir_goes_only_once_its_job_cannot_come_back(tmp_path: Path) -> None:
    work = tmp_path / "work"
    long_ago = NOW - MAX_TIMEOUT_S - 60
    _dir(work, "job_past_deadline", NOW - 5)
    _dir(work, "job_before_deadline", long_ago)  # its deadline is known: it wins over age
    _dir(work, "job_running", long_ago)
    _dir(work, "job_from_a_restart", long_ago, file_touched=long_ago)
    _dir(work, "job_recent_checkpoint", long_ago, file_touched=NOW - 60)
    _dir(work, "job_recent", NOW - 60)
    (work / "notes.txt").write_text("not a job dir")
    outside = _dir(tmp_path, "elsewhere", long_ago)
    (work / "job_link").symlink_to(outside)
    expires = {"job_past_deadline": NOW - 1, "job_before_deadline": NOW + 1}

    stale = stale_job_dirs(work, {"job_running"}, expires, NOW)
    assert [p.name for p in stale] == ["job_from_a_restart", "job_past_deadline"]

    removed = remove_stale_job_dirs(work, {"job_running"}, expires, NOW)
    assert removed == ["job_from_a_restart", "job_past_deadline"]
    assert sorted(p.name for p in work.iterdir()) == [
        "job_before_deadline",
        "job_link",
        "job_recent",
        "job_recent_checkpoint",
        "job_running",
        "notes.txt",
    ]
    assert outside.is_dir()  # a link is never followed out of the work dir


def test_the_newest_entry_counts_as_the_dirs_last_touch(tmp_path: Path) -> None:
    path = _dir(tmp_path, "job_a", 1_000.0, file_touched=5_000.0)
    assert last_touched(path) == 5_000.0
    os.utime(path, (9_000.0, 9_000.0))
    assert last_touched(path) == 9_000.0


def test_no_work_dir_is_nothing_to_prune(tmp_path: Path) -> None:
    assert stale_job_dirs(tmp_path / "missing", (), {}, NOW) == []
    assert remove_stale_job_dirs(tmp_path / "missing", (), {}, NOW) == []
