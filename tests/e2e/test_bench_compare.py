"""`scripts/bench_compare.py`: two revisions measured in alternating pairs, each running
its own code and bench from a worktree that is removed afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPARE = ROOT / "scripts" / "bench_compare.py"
sys.path.insert(0, str(COMPARE.parent))
import bench_compare  # noqa: E402  (a script, imported from its folder)


def _compare(*argv: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPARE), *argv], capture_output=True, text=True, timeout=timeout
    )


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.timeout(240)
def test_pairs_alternate_and_each_side_runs_its_own_revision() -> None:
    worktrees = _git("worktree", "list")
    done = _compare("HEAD", "--pairs", "2", "--", "--smoke", timeout=230)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    runs = report["runs"]
    assert [(r["pair"], r["side"], r["order"]) for r in runs] == [
        (1, "before", 1),
        (1, "after", 2),
        (2, "after", 1),
        (2, "before", 2),
    ]
    head = _git("rev-parse", "--short", "HEAD")
    assert {r["git"] for r in runs if r["side"] == "before"} == {head}  # from its worktree
    # ... and its code too: the before side's packages came from the worktree, not here.
    assert {r["source"] for r in runs if r["side"] == "after"} == {str(ROOT)}
    (before_source,) = {r["source"] for r in runs if r["side"] == "before"}
    assert before_source != str(ROOT) and "ait-compare-before-" in before_source
    for run in runs:
        assert run["errors"] == {} and run["settled_jobs_per_s"] > 0
        assert run["coordinator_cpu_ms_per_job"] > 0
        assert run["seal_helper_cpu_ms_per_job"] >= 0
        assert 0 < run["coordinator_cpu_percent"] <= 100
        # The event loop's thread is part of the process (the verify thread beside it).
        assert 0 < run["event_loop_cpu_ms_per_job"] <= run["coordinator_cpu_ms_per_job"] + 0.01
    assert sum(report["after_cpu_vs_before_in_pairs"].values()) == 2
    assert set(report["medians"]) == {"before", "after"}
    assert (report["before"], report["after"]) == ("HEAD", "working tree")
    assert _git("worktree", "list") == worktrees  # the before side's worktree is gone
    assert not any(Path(r["workdir"]).exists() for r in runs)  # nor the runs' scratch


def test_a_revision_git_does_not_know_is_refused_in_one_line() -> None:
    done = _compare("no-such-revision-xyz", "--pairs", "1")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "bench_compare: git knows no commit 'no-such-revision-xyz'"
    ]


def test_a_bench_run_that_fails_stops_the_comparison_with_its_reason() -> None:
    worktrees = _git("worktree", "list")
    done = _compare("HEAD", "--pairs", "1", "--", "--no-such-option")
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("bench_compare: before (HEAD): bench failed: ")
    assert "unrecognized arguments: --no-such-option" in line
    assert _git("worktree", "list") == worktrees


@pytest.mark.parametrize("argv", [["HEAD", "--pairs", "0"], ["HEAD", "--rounds", "8,8"]])
def test_bad_options_are_refused(argv: list[str]) -> None:
    done = _compare(*argv)
    assert done.returncode == 2 and "error:" in done.stderr


def _run(pair: int, side: str, cpu: float, jobs: float) -> dict[str, Any]:
    # Only AFTER's bench reports its event loop's CPU, as against a revision before round 28.
    loop = cpu - 0.1 if side == "after" else None
    return {"pair": pair, "side": side, "coordinator_cpu_ms_per_job": cpu,
            "event_loop_cpu_ms_per_job": loop, "miners_cpu_ms_per_job": round(cpu / 2, 3),
            "settled_jobs_per_s": jobs, "submit_to_dispatch_p99_ms": cpu * 100}  # fmt: skip


def test_the_summary_is_each_sides_median_and_the_pairs_counted() -> None:
    runs = [
        _run(1, "before", 0.70, 1000.0), _run(1, "after", 0.65, 1100.0),
        _run(2, "after", 0.60, 1200.0), _run(2, "before", 0.60, 1150.0),
        _run(3, "before", 0.50, 1400.0), _run(3, "after", 0.55, 1300.0),
    ]  # fmt: skip
    summary = bench_compare.summarise(runs)
    assert summary["medians"] == {
        "before": {
            "coordinator_cpu_ms_per_job": 0.60,
            "event_loop_cpu_ms_per_job": None,
            "miners_cpu_ms_per_job": 0.3,
            "settled_jobs_per_s": 1150.0,
            "submit_to_dispatch_p99_ms": 60.0,
        },
        "after": {
            "coordinator_cpu_ms_per_job": 0.60,
            "event_loop_cpu_ms_per_job": 0.5,
            "miners_cpu_ms_per_job": 0.3,
            "settled_jobs_per_s": 1200.0,
            "submit_to_dispatch_p99_ms": 60.0,
        },
    }
    assert summary["after_cpu_vs_before_in_pairs"] == {"lower": 1, "equal": 1, "higher": 1}


def test_callgrinds_total_is_read_from_its_summary_line() -> None:
    text = "version: 1\ncmd: python\nevents: Ir\nsummary: 2979504238\n\ntotals: 2979504238\n"
    assert bench_compare.callgrind_total(text) == 2_979_504_238
    with pytest.raises(bench_compare.Refused, match="no summary line"):
        bench_compare.callgrind_total("events: Ir\n")


def test_instruction_counts_alternate_their_order_and_compare_medians() -> None:
    before = bench_compare.Side("before", "BASE", ROOT)
    after = bench_compare.Side("after", "working tree", ROOT)
    counts = {"before": iter([100, 104, 101]), "after": iter([99, 95, 97])}
    order: list[str] = []

    def count(side: bench_compare.Side) -> int:  # stands in for a callgrind run
        order.append(side.name)
        return next(counts[side.name])

    report = bench_compare.compare_instructions((before, after), 3, count)
    assert order == ["before", "after", "after", "before", "before", "after"]
    assert report["instructions_a_job"] == {"before": [100, 104, 101], "after": [99, 95, 97]}
    assert report["medians"] == {"before": 101, "after": 97}
    assert report["change"] == round(97 / 101 - 1, 4)
