"""The benchmark's smoke mode keeps working: real processes, every job settled."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "mode",
    [
        [],
        ["--batch", "10", "--coordinator-python", sys.executable, "--wallets", "2"],
        ["--batch", "10", "--offered-rate", "200", "--unserved-jobs", "2"],
    ],
    ids=["one-job-a-request", "batch-two-wallets", "open-loop-batch"],
)
def test_bench_smoke_settles_every_job(mode: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", *mode], capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["errors"] == {}
    assert report["submitted"] > 0
    # With several wallets, every wallet's jobs are found and counted.
    assert report["statuses"] == {"completed": report["submitted"]}
    assert report["wallets"] == (2 if "--wallets" in mode else 1)
    assert report["settled_jobs_per_s"] > 0
    # Jobs for a model no miner serves wait through the window, are cancelled after it
    # and are left out of the figures.
    assert report["unserved_jobs"] == (2 if "--unserved-jobs" in mode else 0)
    # Every request carries a whole batch, in the open loop too (it once sent batches of 1).
    assert report["jobs_per_request"] == (10.0 if "--batch" in mode else 1.0)
    assert report["submit_to_dispatch_ms"]["p99"] is not None
    assert report["submit_to_miner_start_ms"]["p99"] is not None  # read off the receipts
    # The accounting the docs rely on is there (values are not checked: no timing tests).
    assert set(report["cpu_ms_per_settled_job"]) == {
        "coordinator",
        "seal_helper",
        "miners",
        "load_generator",
    }
    helper = report["coordinator"]["seal_helper"]
    assert set(helper) == {"cpu_percent", "rss_mib", "blocks_drafted"}
    # The window's settlements were sealed (drafted on the loop or in the helper).
    assert sum(helper["blocks_drafted"].values()) > 0
    assert report["coordinator"]["group_commits"] > 0
    # Every settled result's signature was checked, on the loop or in a frame's batch.
    signatures = report["coordinator"]["result_signatures"]
    assert set(signatures) == {"event_loop", "thread"} and sum(signatures.values()) > 0
    loop_share = report["coordinator"]["event_loop_cpu_percent"]
    assert 0 < loop_share <= report["coordinator"]["cpu_percent"]
    for histogram in ("commit_time", "loop_lag"):  # group commits; the loop's 50 ms timer
        times = report["coordinator"][histogram]
        assert set(times) == {"p50_at_most_ms", "p99_at_most_ms", "over_10ms"}
        assert times["p50_at_most_ms"] is not None and times["over_10ms"] >= 0
    assert report["versions"]["sqlalchemy"]
    # Which build of the interpreter ran it (a fifth of the CPU a job, round 30).
    assert report["versions"]["python_executable"] == os.path.realpath(sys.executable)
    assert report["versions"]["libpython"] in ("shared", "static")
    if "--coordinator-python" in mode:
        assert report["versions"]["coordinator"]["python"] == platform.python_version()


def test_bench_refuses_a_coordinator_python_that_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "no-python"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--coordinator-python", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"--coordinator-python: {missing} is not an executable" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("slots", ["0", "65"])
def test_bench_refuses_miner_slots_a_miner_would_refuse(slots: str) -> None:
    # Such miners never connected, and the bench said only that, a minute later.
    done = subprocess.run(
        [sys.executable, str(BENCH), "--miner-concurrency", slots],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "--miner-concurrency takes 1 to 64 slots a miner" in done.stderr


def test_bench_refuses_more_wallets_than_clients() -> None:
    # The smoke's 4 clients, not the default 64: a wallet without a client submits nothing.
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--wallets", "8"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--wallets takes 1 to --concurrency wallets" in done.stderr
    assert done.stdout == ""


def _report_of(script: str, *args: str) -> Any:
    """The JSON report a bench script beside `scripts/bench` prints for `args`."""
    done = subprocess.run(
        [sys.executable, str(BENCH.with_name(script)), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_seal_bench_times_full_blocks_stored_by_the_real_sealer() -> None:
    report = _report_of("bench_seal.py", "--sealed", "1000", "--blocks", "2")
    assert report["entries_per_block"] == 1000 and report["blocks_timed"] == 1
    assert set(report["store_ms"]) == {"median", "max", "first"}
    assert report["draft_ms"]["median"] > 0


@pytest.mark.parametrize("helper", [[], ["--seal-helper"]], ids=["event-loop", "seal-helper"])
def test_ops_bench_settles_every_job_it_submits(helper: list[str]) -> None:
    report = _report_of(
        "bench_ops.py", "--rounds", "3", "--batch", "5", "--seal-every", "2", *helper
    )
    assert report["jobs"] == 15 and report["blocks_sealed"] == 1
    # With --seal-helper the block was drafted by the helper process (and stored here).
    assert report["blocks_drafted_by_helper"] == (1 if helper else 0)
    if helper:
        assert report["seal_helper_cpu_us_per_job"] >= 0
    else:
        assert report["seal_helper_cpu_us_per_job"] is None
    # Each job paid the miner its output's length at 1 micro-AIT a unit (the 5% fee rounds
    # to 0): every job was claimed, settled and paid, not just timed.
    assert report["miner_paid_uait"] == 15 * len(b'{"text": "hello"}')
    assert set(report["cpu_us_per_job"]) == {"all", "submit", "claim", "complete", "seal"}
