"""Two revisions of the coordinator measured against each other (docs/benchmarks.md).

On this shared host the same code's CPU a job moves by up to 1.5x between minutes, so a
change is measured against its base in the same window, the way every round since round
7 has: alternating pairs of `scripts/bench` runs, BEFORE first in odd pairs and AFTER first
in even ones, each revision running its own code and its own bench (from a git worktree,
its C extension built there, through PYTHONPATH, on this checkout's .venv). With
`--instructions`, each revision's write path instead runs under `valgrind
--tool=callgrind` (`scripts/bench_ops.py` at two round counts): instructions a job, which
the host's speed does not move (round 22).

    .venv/bin/python scripts/bench_compare.py d196016              # against the working tree
    .venv/bin/python scripts/bench_compare.py d196016 006b9fb --pairs 6 -- --batch 25
    .venv/bin/python scripts/bench_compare.py d196016 --instructions --repeats 3

Prints one JSON report on stdout (each run, and each side's medians); progress on stderr.
Exits 2 with one line on stderr when it cannot compare: a revision git does not know, no
valgrind for `--instructions`, a run that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_BENCH = ["--duration", "20", "--concurrency", "16", "--batch", "25", "--miners", "2"]
WORKING_TREE = "working tree"


class Refused(Exception):
    """A one-line reason the comparison cannot run."""


@dataclass(frozen=True)
class Side:
    name: str  # "before" | "after"
    revision: str  # as given, or WORKING_TREE
    tree: Path


def log(text: str) -> None:
    print(f"bench_compare: {text}", file=sys.stderr, flush=True)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Refused(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "git failed")
    return done.stdout.strip()


@contextlib.contextmanager
def checked_out(revision: str, name: str) -> Iterator[Side]:
    """`revision` in a worktree of its own (removed afterwards), with this checkout's
    .venv; the working tree itself for WORKING_TREE."""
    if revision == WORKING_TREE:
        yield Side(name, revision, ROOT)
        return
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except Refused:
        raise Refused(f"git knows no commit {revision!r}") from None
    with tempfile.TemporaryDirectory(prefix=f"ait-compare-{name}-") as scratch:
        tree = Path(scratch) / "tree"
        _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        try:
            (tree / ".venv").symlink_to(ROOT / ".venv")
            _build_extensions(tree, f"{name} ({revision})")
            yield Side(name, revision, tree)
        finally:
            _git("worktree", "remove", "--force", str(tree))


def _build_extensions(tree: Path, label: str) -> None:
    """A revision's compiled modules (setup.py's, since round 28) built in its tree, so it
    runs its own; a revision without setup.py has none."""
    if not (tree / "setup.py").exists():
        return
    command = [str(PYTHON), "setup.py", "-q", "build_ext", "--inplace"]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise Refused(f"{label}: build_ext failed: {_last_line(done.stderr)}")


def _run(side: Side, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`args` run in `side`'s tree, its packages first on the import path (the coordinator
    and miner processes the bench starts inherit it)."""
    env = {**os.environ, "PYTHONPATH": str(side.tree)}
    return subprocess.run(args, cwd=side.tree, env=env, capture_output=True, text=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing on stderr)"


def bench_run(side: Side, bench_args: list[str], pair: int, order: int) -> dict[str, Any]:
    done = _run(side, [str(PYTHON), "scripts/bench.py", *bench_args])
    if done.returncode != 0:
        raise Refused(f"{side.name} ({side.revision}): bench failed: {_last_line(done.stderr)}")
    report = json.loads(done.stdout)
    # The run's scratch (its database, ~180 MB after a 20 s window, and its logs) is not
    # kept: a comparison makes a dozen. A run worth reading is run with scripts/bench.
    shutil.rmtree(report["workdir"], ignore_errors=True)
    cpu = report["cpu_ms_per_settled_job"]
    run = {
        "pair": pair,
        "side": side.name,
        "order": order,  # 1: the pair's first run
        "git": report["versions"].get("git"),  # the commit whose bench ran
        "source": report["versions"].get("source"),  # where its code was imported from
        "settled_jobs_per_s": report["settled_jobs_per_s"],
        "coordinator_cpu_ms_per_job": cpu["coordinator"],
        "miners_cpu_ms_per_job": cpu["miners"],
        # The coordinator's seal helper process (reported from round 27 on; else None).
        "seal_helper_cpu_ms_per_job": cpu.get("seal_helper"),
        "coordinator_cpu_percent": report["coordinator"]["cpu_percent"],
        "event_loop_cpu_ms_per_job": report["coordinator"].get("event_loop_cpu_ms_per_job"),
        "submit_to_dispatch_p99_ms": report["submit_to_dispatch_ms"]["p99"],
        "errors": report["errors"],
        "workdir": report["workdir"],  # removed once its report is read
    }
    log(f"pair {pair} {side.name}: {run['settled_jobs_per_s']} jobs/s, {cpu['coordinator']} ms")
    return run


def compare_runs(sides: tuple[Side, Side], pairs: int, bench_args: list[str]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for pair in range(1, pairs + 1):
        order = sides if pair % 2 else sides[::-1]
        runs.extend(bench_run(side, bench_args, pair, i + 1) for i, side in enumerate(order))
    return {"runs": runs, **summarise(runs)}


MEDIANS = (
    "coordinator_cpu_ms_per_job",
    "event_loop_cpu_ms_per_job",
    "miners_cpu_ms_per_job",
    "settled_jobs_per_s",
    "submit_to_dispatch_p99_ms",
)


def _median(values: list[float | None]) -> float | None:
    """Rounded; None where no run had the figure (a revision whose bench predates it)."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each side's medians, and in how many pairs AFTER's CPU a job was lower, equal or
    higher than BEFORE's."""
    medians = {
        name: {key: _median([r[key] for r in runs if r["side"] == name]) for key in MEDIANS}
        for name in ("before", "after")
    }
    by_pair: dict[int, dict[str, float]] = {}
    for r in runs:
        by_pair.setdefault(r["pair"], {})[r["side"]] = r["coordinator_cpu_ms_per_job"]
    after_vs_before = {"lower": 0, "equal": 0, "higher": 0}
    for cpu in by_pair.values():
        if cpu["after"] < cpu["before"]:
            after_vs_before["lower"] += 1
        elif cpu["after"] > cpu["before"]:
            after_vs_before["higher"] += 1
        else:
            after_vs_before["equal"] += 1
    return {"medians": medians, "after_cpu_vs_before_in_pairs": after_vs_before}


def instructions(side: Side, rounds: tuple[int, int], batch: int) -> int:
    """Instructions a job of `side`'s write path: two callgrind runs of bench_ops that
    differ only in their rounds, start-up cancelling out."""
    totals = []
    with tempfile.TemporaryDirectory(prefix="ait-compare-cg-") as scratch:
        for count in rounds:
            out = Path(scratch) / f"cg.{count}.out"
            ops = ["scripts/bench_ops.py", "--rounds", str(count), "--batch", str(batch)]
            callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            done = _run(side, [*callgrind, str(PYTHON), *ops])
            if done.returncode != 0:
                failure = _last_line(done.stderr)
                raise Refused(f"{side.name}: bench_ops under callgrind failed: {failure}")
            totals.append(callgrind_total(out.read_text()))
    per_job = round((totals[1] - totals[0]) / (batch * (rounds[1] - rounds[0])))
    log(f"{side.name} ({side.revision}): {per_job:,} instructions a job")
    return per_job


def compare_instructions(
    sides: tuple[Side, Side], repeats: int, count: Callable[[Side], int]
) -> dict[str, Any]:
    """Each side counted (`count`: `instructions`) `repeats` times, alternating which goes
    first as the pairs do. The same code's count moves by up to ~1.3% from run to run
    (its job ids and keys are random, its WAL checkpoints run on a timer), so the
    medians compare (docs/benchmarks.md, round 26)."""
    counts: dict[str, list[int]] = {"before": [], "after": []}
    for repeat in range(repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            counts[side.name].append(count(side))
    medians = {name: statistics.median(values) for name, values in counts.items()}
    change = round(medians["after"] / medians["before"] - 1, 4)
    return {"instructions_a_job": counts, "medians": medians, "change": change}


def callgrind_total(text: str) -> int:
    """The instructions a callgrind output file counts in all (its `summary:` or
    `totals:` line)."""
    for line in text.splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise Refused("callgrind's output has no summary line")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        usage="bench_compare.py BEFORE [AFTER] [options] [-- bench options]",
    )
    parser.add_argument("before", help="git revision measured first in odd pairs")
    parser.add_argument("after", nargs="?", default=WORKING_TREE, help="default: the working tree")
    parser.add_argument("--pairs", type=int, default=6, help="alternating pairs of runs (1-50)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="callgrind instructions a job of bench_ops' write path instead of bench runs",
    )
    parser.add_argument("--rounds", default="8,24", help="bench_ops' two round counts (R1,R2)")
    parser.add_argument("--batch", type=int, default=25, help="bench_ops' jobs a batch")
    parser.add_argument("--repeats", type=int, default=3, help="counts of each side (1-20)")
    own, bench = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    args = parser.parse_args(own)
    if not 1 <= args.pairs <= 50:
        parser.error("--pairs must be 1-50")
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats must be 1-20")
    try:
        low, high = (int(n) for n in args.rounds.split(","))
    except ValueError:
        parser.error("--rounds must be two counts, R1,R2")
    if not 1 <= low < high:
        parser.error("--rounds must be two counts with 1 <= R1 < R2")
    args.rounds = (low, high)
    args.bench = bench or DEFAULT_BENCH  # after --: scripts/bench's options
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.instructions and shutil.which("valgrind") is None:
        print("bench_compare: --instructions needs valgrind on PATH", file=sys.stderr)
        return 2
    try:
        with (
            checked_out(args.before, "before") as before,
            checked_out(args.after, "after") as after,
        ):
            if args.instructions:
                report: dict[str, Any] = {"mode": "instructions", "rounds": args.rounds}
                report.update(
                    compare_instructions(
                        (before, after),
                        args.repeats,
                        lambda side: instructions(side, args.rounds, args.batch),
                    )
                )
            else:
                report = {"mode": "pairs", "bench": args.bench}
                report.update(compare_runs((before, after), args.pairs, args.bench))
    except Refused as exc:
        print(f"bench_compare: {exc}", file=sys.stderr)
        return 2
    report["before"], report["after"] = args.before, args.after
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
