"""Benchmark: a real coordinator process, real miner daemons (echo runtime) and clients.

Every job is real: pushed to a miner, signed, verified by the coordinator, settled on the
ledger. Latencies come from the coordinator's own timestamps (created_at, started_at,
completed_at), throughput from completed jobs inside the load window. Prints one JSON
report on stdout; progress goes to stderr. See docs/benchmarks.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from bench_load import TERMINAL, BatchLoad, Load

import protocol
from protocol.limits import MAX_CONCURRENCY
from protocol.timefmt import parse_iso_ms

BIN = Path(sys.executable).parent
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

MINERS_PER_KEY = 1000  # below the hub's per-key cap on connected daemons


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds and RSS of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    # The main thread alone (its task has the process's id): in the coordinator, the
    # event loop, apart from the threads beside it (verify, SQLite checkpoints).
    main = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "cpu_s": (int(fields[11]) + int(fields[12])) / ticks,
        "main_thread_cpu_s": (int(main[11]) + int(main[12])) / ticks,
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
    }


LIBRARIES = ("aiohttp", "sqlalchemy", "aiosqlite", "asyncpg", "uvloop", "orjson")
# Prints, as JSON, the version of the interpreter that runs it and of its LIBRARIES, and
# which build it is: the executable a venv's python resolves to, and whether it loads
# libpython as a shared library. The build moved the coordinator's CPU a job by a fifth
# on the same code (docs/benchmarks.md, round 30), so figures name it.
_PRINT_VERSIONS = f"""
import json, os, sys
from importlib.metadata import PackageNotFoundError, version
out = {{"python": sys.version.split()[0], "python_executable": os.path.realpath(sys.executable)}}
try:
    with open("/proc/self/maps") as maps:
        out["libpython"] = "shared" if "/libpython3" in maps.read() else "static"
except OSError:
    pass
for name in {LIBRARIES!r}:
    try:
        out[name] = version(name)
    except PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def interpreter_versions(python: str) -> dict[str, str]:
    done = subprocess.run(
        [python, "-c", _PRINT_VERSIONS], capture_output=True, text=True, check=True, timeout=60
    )
    found: dict[str, str] = json.loads(done.stdout)
    return found


def versions(coordinator_python: str) -> dict[str, Any]:
    """The bench's Python and libraries, the git commit, and (with --coordinator-python)
    those the coordinator runs with."""
    out: dict[str, Any] = interpreter_versions(sys.executable)
    # Where the project's packages were imported from (the coordinator and miners the
    # bench starts inherit its import path: PYTHONPATH runs another checkout's code).
    out["source"] = str(Path(protocol.__file__).resolve().parents[1])
    if coordinator_python:
        out["coordinator"] = interpreter_versions(coordinator_python)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
        out["git"] = head.stdout.strip()
    return out


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load: other work competing for the cores."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += proc_stats(pid)["cpu_s"]
    return total


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started (the coordinator's seal helper), from /proc (Linux)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def children_stats(pid: int) -> dict[int, dict[str, float]]:
    """proc_stats of each process `pid` started, by pid."""
    out: dict[int, dict[str, float]] = {}
    for child in child_pids(pid):
        with contextlib.suppress(OSError, ValueError):
            out[child] = proc_stats(child)
    return out


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def scrape_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The coordinator's own counters from /metrics: group-commit transactions and writes,
    and coalesced requests and writes (by `name{labels}`)."""
    wanted = (
        "ait_db_commits_total",
        "ait_db_commit_seconds_bucket",
        "ait_event_loop_lag_seconds_bucket",
        "ait_db_writes_total",
        "ait_db_coalesced_",
        "ait_miner_frames_total",
        "ait_miner_messages_total",
        "ait_blocks_drafted_total",
        "ait_result_signatures_total",
    )
    out: dict[str, float] = {}
    with contextlib.suppress(aiohttp.ClientError):
        async with session.get(url + "/metrics") as response:
            for line in (await response.text()).splitlines():
                name, _, value = line.partition(" ")
                if name.startswith(wanted):
                    out[name] = float(value)
    return out


def grown(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """How much the counter `name` (with its labels) grew over the window."""
    return after.get(name, 0) - before.get(name, 0)


def bucket_times(before: dict[str, float], after: dict[str, float], family: str) -> dict[str, Any]:
    """What a seconds histogram of /metrics counted in the window, from its buckets: the
    p50 and p99 as the bucket bound they fall under (ms), and how many were over 10 ms.
    `ait_db_commit_seconds`: the group commits (on SQLite each stalled the coordinator's
    event loop that long); `ait_event_loop_lag_seconds`: how late the loop's 50 ms timer
    fired (how long the loop was held)."""
    grew: list[tuple[float, float]] = []  # (upper bound s, cumulative count)
    for name in after:
        if name.startswith(family + "_bucket{le="):
            bound = name.split('"')[1]
            upper = float("inf") if bound == "+Inf" else float(bound)
            grew.append((upper, grown(before, after, name)))
    grew.sort()
    total = grew[-1][1] if grew else 0

    def at_most(q: float) -> float | None:
        for bound, count in grew:
            if total and count >= q * total:
                return None if bound == float("inf") else round(bound * 1000, 1)
        return None

    within_10ms = next((count for bound, count in grew if bound >= 0.01), total)
    return {
        "p50_at_most_ms": at_most(0.5),
        "p99_at_most_ms": at_most(0.99),
        "over_10ms": int(total - within_10ms),
    }


def requests_per_coalesced_write(
    before: dict[str, float], after: dict[str, float]
) -> dict[str, float]:
    """Submits, claims and results written per coalesced operation in the window."""
    out = {}
    for name in after:
        if not name.startswith("ait_db_coalesced_requests_total{kind="):
            continue
        kind = name.split('"')[1]
        writes_name = name.replace("_requests_", "_writes_")
        writes = grown(before, after, writes_name)
        if writes:
            out[kind] = round(grown(before, after, name) / writes, 1)
    return out


def messages_per_frame(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Miner protocol messages per websocket frame in the window, by direction."""
    out = {}
    for direction in ("in", "out"):
        label = f'{{direction="{direction}"}}'
        frames = grown(before, after, "ait_miner_frames_total" + label)
        messages = grown(before, after, "ait_miner_messages_total" + label)
        if frames:
            out[direction] = round(messages / frames, 1)
    return out


async def create_pg_database() -> str:
    import asyncpg

    name = "ait_bench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def drop_pg_database(db_url: str) -> None:
    """Drop the database `create_pg_database` made (each run used to leave one behind)."""
    import asyncpg

    name = db_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class Cluster:
    """Coordinator + miner processes on 127.0.0.1, torn down on exit."""

    def __init__(self, args: argparse.Namespace, workdir: Path, db_url: str) -> None:
        self.args = args
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "coordinator.toml"
        db_line = f'db = "{db_url}"\n' if db_url else ""
        self.config.write_text(
            f'data_dir = "{workdir / "data"}"\n{db_line}'
            f"lease_seconds = 30\nheartbeat_seconds = 5\n"
            "[rate_limits.client]\nper_minute = 0\nper_hour = 0\n"
            "[rate_limits.miner]\nper_minute = 0\nper_hour = 0\n"
        )
        self.processes: list[subprocess.Popen[bytes]] = []
        self.miners: list[subprocess.Popen[bytes]] = []
        self.coordinator: subprocess.Popen[bytes] | None = None

    def keys(self, role: str, count: int) -> list[dict[str, Any]]:
        """`count` new API keys of `role`, made in one process (scripts/bench_keys.py)."""
        command = [sys.executable, str(Path(__file__).with_name("bench_keys.py"))]
        done = subprocess.run(
            [*command, "--config", str(self.config), "--role", role, "--count", str(count)],
            capture_output=True,
            text=True,
            check=True,
        )
        return [json.loads(line) for line in done.stdout.splitlines()]

    def start_coordinator(self) -> None:
        logfile = (self.workdir / "coordinator.log").open("wb")
        profile = ["-m", "cProfile", "-o", self.args.profile] if self.args.profile else []
        self.coordinator = subprocess.Popen(
            [
                self.args.coordinator_python or sys.executable,
                *profile,
                str(BIN / "coordinator"),
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(self.coordinator)

    def start_miner(self, index: int, api_key: str) -> None:
        config = self.workdir / f"miner{index}.toml"
        config.write_text(
            f'coordinator = "{self.url}"\napi_key = "{api_key}"\n'
            f'key_file = "{self.workdir / f"miner{index}.key"}"\ndevice = "cpu"\n'
            f"max_concurrency = {self.args.miner_concurrency}\n"
            f'work_dir = "{self.workdir / f"work{index}"}"\n'
            '[[models]]\nname = "echo"\nruntime = "echo"\nprice = 0.000001\n'
        )
        logfile = (self.workdir / f"miner{index}.log").open("wb")
        process = subprocess.Popen(
            [str(BIN / "miner"), "run", "--config", str(config)],
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        self.miners.append(process)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


async def wait_ready(session: aiohttp.ClientSession, cluster: Cluster, miners: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cluster.coordinator is not None and cluster.coordinator.poll() is not None:
            raise SystemExit("bench: the coordinator exited; see its log in the work dir")
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(cluster.url + "/v1/miners") as response:
                if response.status == 200 and len((await response.json())["miners"]) >= miners:
                    return
        await asyncio.sleep(0.2)
    raise SystemExit(f"bench: {miners} miners did not connect within 60 s")


async def collect(
    session: aiohttp.ClientSession, url: str, count: int, drain_s: float
) -> list[dict[str, Any]]:
    """Every job the bench submitted, newest first, from the list endpoint; waits up to
    `drain_s` for the backlog to finish (an overloaded open loop leaves one)."""
    deadline = time.monotonic() + drain_s
    while True:
        jobs: list[dict[str, Any]] = []
        while len(jobs) < count:
            params = {"limit": "100", "offset": str(len(jobs))}
            async with session.get(url + "/v1/jobs", params=params) as response:
                page = (await response.json())["jobs"]
            if not page:
                break
            jobs.extend(page)
        pending = [j for j in jobs if j["status"] not in TERMINAL]
        if not pending or time.monotonic() > deadline:
            return jobs
        log(f"waiting for {len(pending)} unfinished jobs")
        await asyncio.sleep(1)


async def job_times(
    session: aiohttp.ClientSession, url: str, jobs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if all("created_at" in job and "completed_at" in job for job in jobs):
        return jobs
    out: list[dict[str, Any]] = []
    for job in jobs:  # the list view is short: fetch each job (after the load window)
        async with session.get(f"{url}/v1/jobs/{job['job_id']}") as response:
            out.append(await response.json())
    return out


RECEIPT_SAMPLE = 1_000  # completed jobs whose receipts are read (after the load window)


async def miner_start_waits(
    session: aiohttp.ClientSession, url: str, jobs: list[dict[str, Any]], sample: int
) -> list[float]:
    """Submit -> the miner's own start (its receipt's `started_at`, same host clock), in
    ms, over an even sample of the completed jobs. `started_at` of the job is when it was
    leased, inside the commit that leases it; this is when the miner had it."""
    done = [j for j in jobs if j["status"] == "completed"]
    step = max(1, len(done) // max(1, sample))
    waits: list[float] = []
    for job in done[::step]:
        async with session.get(f"{url}/v1/jobs/{job['job_id']}/receipt") as response:
            receipt = (await response.json())["receipt"]
        waits.append(parse_iso_ms(receipt["started_at"]) - parse_iso_ms(job["created_at"]))
    return waits


def summarize(jobs: list[dict[str, Any]], window: tuple[float, float]) -> dict[str, Any]:
    dispatch, complete, in_window = [], [], 0
    statuses: dict[str, int] = {}
    for job in jobs:
        statuses[job["status"]] = statuses.get(job["status"], 0) + 1
        created = parse_iso_ms(job["created_at"])
        if job.get("started_at"):
            dispatch.append(parse_iso_ms(job["started_at"]) - created)
        if job["status"] == "completed" and job.get("completed_at"):
            done_ms = parse_iso_ms(job["completed_at"])
            complete.append(done_ms - created)
            in_window += window[0] * 1000 <= done_ms <= window[1] * 1000
    duration = window[1] - window[0]
    return {
        "settled_jobs": statuses.get("completed", 0),
        "settled_jobs_per_s": round(in_window / duration, 1),
        "statuses": statuses,
        "submit_to_dispatch_ms": {
            "p50": percentile(dispatch, 0.5),
            "p99": percentile(dispatch, 0.99),
        },
        "submit_to_completed_ms": {
            "p50": percentile(complete, 0.5),
            "p99": percentile(complete, 0.99),
        },
    }


def _headers(client: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {client['api_key']}", "Content-Type": "application/json"}


async def _wallet_sessions(
    stack: contextlib.AsyncExitStack, clients: list[dict[str, Any]], pool: aiohttp.TCPConnector
) -> list[aiohttp.ClientSession]:
    """A session a wallet (its key in the headers), all on `pool`, closed with `stack`."""
    return [
        await stack.enter_async_context(
            aiohttp.ClientSession(headers=_headers(each), connector=pool, connector_owner=i == 0)
        )
        for i, each in enumerate(clients)
    ]


def _shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` as evenly as whole numbers go."""
    return [total // parts + (i < total % parts) for i in range(parts)]


async def run_load(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    clients = cluster.keys("client", args.wallets)
    [miner] = cluster.keys("miner", 1)
    cluster.start_coordinator()
    for index in range(args.miners):
        cluster.start_miner(index, miner["api_key"])
    # Keep-alive connections, bounded: an unbounded pool opens a socket per request in
    # open loop, and the connection churn costs both sides more than the requests.
    connector = aiohttp.TCPConnector(limit=args.http_connections)
    async with contextlib.AsyncExitStack() as stack:
        sessions = await _wallet_sessions(stack, clients, connector)
        # A wallet's stream of all its jobs holds a connection for the whole run: on a
        # pool of their own, so that many wallets' streams leave the submits theirs.
        streams = aiohttp.TCPConnector(limit=0)
        stream_sessions = await _wallet_sessions(stack, clients, streams)
        session = sessions[0]
        await wait_ready(session, cluster, args.miners)
        for each, wallet in zip(clients, sessions, strict=True):
            faucet = {"address": each["address"], "amount": 1000}
            for _ in range(args.faucet_calls):
                async with wallet.post(cluster.url + "/v1/faucet", json=faucet) as response:
                    assert response.status in (200, 201), await response.text()
        job: dict[str, Any] = {"model": "echo", "input": "x" * args.input_bytes}
        standby: list[Any] = []
        if args.standby_miners:
            standby = await connect_standby(session, cluster, args.miners, args.standby_miners)
            # The miners' price is 1 uAIT a byte of input (its JSON text); the standby
            # miners' STANDBY_PRICE_UAIT is above this cap, so none is ever eligible.
            job["max_price"] = round(10 * (args.input_bytes + 2) / 1e6, 6)  # AIT
        unserved = await submit_unserved(session, cluster.url, args.unserved_jobs)
        # A load a wallet: its clients (or its share of the offered rate) submit with its
        # key and read its jobs' ends off its own streams.
        loads = [
            BatchLoad(
                wallet,
                cluster.url,
                job,
                args.batch,
                streams=stream_wallet,
                ends_only=args.stream_events == "ends",
            )
            if args.batch
            else Load(wallet, cluster.url, job)
            for wallet, stream_wallet in zip(sessions, stream_sessions, strict=True)
        ]
        assert cluster.coordinator is not None
        miner_pids = [m.pid for m in cluster.miners]
        before = proc_stats(cluster.coordinator.pid)
        helpers_before = children_stats(cluster.coordinator.pid)
        cpu_before = (cpu_seconds(miner_pids), self_cpu_seconds())
        metrics_before = await scrape_metrics(session, cluster.url)
        load_before = load_average()
        log(f"load for {args.duration} s")
        start = time.time()
        until = time.monotonic() + args.duration
        if args.offered_rate:
            rate = args.offered_rate / len(loads)
            await asyncio.gather(*(load.open_loop(rate, until) for load in loads))
        else:
            shares = _shares(args.concurrency, len(loads))
            await asyncio.gather(
                *(load.closed_loop(n, until) for load, n in zip(loads, shares, strict=True))
            )
        await asyncio.gather(*(load.stop() for load in loads))
        end = time.time()
        after = proc_stats(cluster.coordinator.pid)
        helpers_after = children_stats(cluster.coordinator.pid)
        cpu_after = (cpu_seconds(miner_pids), self_cpu_seconds())
        metrics_after = await scrape_metrics(session, cluster.url)
        load_after = load_average()
        await cancel_jobs(session, cluster.url, unserved)
        jobs, waits = [], []
        for wallet, load in zip(sessions, loads, strict=True):
            listed = await collect(wallet, cluster.url, len(load.job_ids), args.drain_seconds)
            ours = set(load.job_ids)  # the list's last page may reach the unserved jobs
            listed = [job for job in listed if job["job_id"] in ours]
            timed = await job_times(wallet, cluster.url, listed)
            jobs += timed
            sample = RECEIPT_SAMPLE // len(loads)
            waits += await miner_start_waits(wallet, cluster.url, timed, sample)
        for ws in standby:
            await ws.close()
    report = summarize(jobs, (start, end))
    report["submit_to_miner_start_ms"] = {
        "p50": percentile(waits, 0.5),
        "p99": percentile(waits, 0.99),
    }
    submitted = sum(len(load.job_ids) for load in loads)
    requests = sum(load.requests for load in loads)
    errors: dict[str, int] = {}
    for load in loads:
        for kind, count in load.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    client_latency_ms = [ms for load in loads for ms in load.client_latency_ms]
    settled = max(1.0, report["settled_jobs_per_s"] * (end - start))
    coordinator_cpu_s = after["cpu_s"] - before["cpu_s"]
    event_loop_cpu_s = after["main_thread_cpu_s"] - before["main_thread_cpu_s"]
    # The seal helper (coordinator.service.sealer), started before or during the window.
    helpers_cpu_s = sum(
        stats["cpu_s"] - helpers_before.get(pid, {}).get("cpu_s", 0.0)
        for pid, stats in helpers_after.items()
    )
    helpers_rss_mib = sum(stats["rss_mib"] for stats in helpers_after.values())
    commits = grown(metrics_before, metrics_after, "ait_db_commits_total")
    writes = grown(metrics_before, metrics_after, "ait_db_writes_total")
    report.update(
        submitted=submitted,
        wallets=len(loads),
        unserved_jobs=len(unserved),
        jobs_per_request=round(submitted / requests, 1) if requests else None,
        errors=errors,
        client_submit_to_done_ms={
            "p50": percentile(client_latency_ms, 0.5),
            "p99": percentile(client_latency_ms, 0.99),
        },
        coordinator={
            "cpu_percent": round(100 * coordinator_cpu_s / (end - start), 1),
            # Its main thread's share: the loop that serves every request and frame.
            "event_loop_cpu_percent": round(100 * event_loop_cpu_s / (end - start), 1),
            "event_loop_cpu_ms_per_job": round(1000 * event_loop_cpu_s / settled, 3),
            "rss_mib": round(after["rss_mib"], 1),
            "peak_rss_mib": round(after["peak_rss_mib"], 1),
            "group_commits": int(commits),
            "writes_per_commit": round(writes / commits, 1) if commits else None,
            "commit_time": bucket_times(metrics_before, metrics_after, "ait_db_commit_seconds"),
            "loop_lag": bucket_times(metrics_before, metrics_after, "ait_event_loop_lag_seconds"),
            "requests_per_coalesced_write": requests_per_coalesced_write(
                metrics_before, metrics_after
            ),
            "miner_messages_per_frame": messages_per_frame(metrics_before, metrics_after),
            # Where the window's result signatures were checked (coordinator.hub.verifier).
            "result_signatures": {
                where: int(
                    grown(
                        metrics_before,
                        metrics_after,
                        f'ait_result_signatures_total{{where="{where}"}}',
                    )
                )
                for where in ("event_loop", "thread")
            },
            "seal_helper": {
                "cpu_percent": round(100 * helpers_cpu_s / (end - start), 1),
                "rss_mib": round(helpers_rss_mib, 1),
                "blocks_drafted": {
                    where: int(
                        grown(
                            metrics_before,
                            metrics_after,
                            f'ait_blocks_drafted_total{{where="{where}"}}',
                        )
                    )
                    for where in ("event_loop", "helper")
                },
            },
        },
        # CPU time per job settled in the window: steadier than jobs/s on a shared machine.
        cpu_ms_per_settled_job={
            "coordinator": round(1000 * coordinator_cpu_s / settled, 3),
            "seal_helper": round(1000 * helpers_cpu_s / settled, 3),
            "miners": round(1000 * (cpu_after[0] - cpu_before[0]) / settled, 3),
            "load_generator": round(1000 * (cpu_after[1] - cpu_before[1]) / settled, 3),
        },
        machine_load_average={"before": load_before, "after": load_after},
    )
    return report


UNSERVED_MODEL = "bench-unserved"  # a model none of the bench's miners serves


async def submit_unserved(session: aiohttp.ClientSession, url: str, count: int) -> list[str]:
    """`count` jobs for a model no miner serves, queued before the load starts (a market
    always holds some jobs nobody can run yet); their ids, to cancel after the window."""
    ids: list[str] = []
    job = {"model": UNSERVED_MODEL, "input": "x", "timeout_seconds": 3600}
    for _ in range(count):
        async with session.post(url + "/v1/jobs", json=job) as response:
            assert response.status == 201, await response.text()
            ids.append((await response.json())["job_id"])
    return ids


async def cancel_jobs(session: aiohttp.ClientSession, url: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        async with session.delete(f"{url}/v1/jobs/{job_id}") as response:
            assert response.status == 200, await response.text()


async def connect_idle_miners(
    cluster: Cluster, count: int, advert: Any, *, resume: bool
) -> tuple[list[Any], list[BaseException]]:
    """`count` miners connected from this process (real keys, signed nonces, adverts) that
    run nothing; with `resume` each also says it runs nothing, so the hub counts its slots
    as free and every plan weighs it."""
    from miner.connection import open_session
    from miner.identity import load_identity
    from protocol.messages import Resume, encode

    # The hub caps the daemons one miner key serves (an operator's hosts); spread over keys.
    miner_keys = cluster.keys("miner", -(-count // MINERS_PER_KEY))
    ws_url = cluster.url.replace("http", "ws") + "/v1/miners/ws"
    sockets: list[Any] = []
    semaphore = asyncio.Semaphore(64)

    async def connect(index: int) -> None:
        identity = load_identity(cluster.workdir / "keys" / f"{index}.key")
        async with semaphore:
            api_key = miner_keys[index // MINERS_PER_KEY]["api_key"]
            ws, _ = await open_session(ws_url, api_key, identity, advert)
            if resume:
                await ws.send(encode(Resume()))
        sockets.append(ws)

    results = await asyncio.gather(*(connect(i) for i in range(count)), return_exceptions=True)
    return sockets, [r for r in results if isinstance(r, BaseException)]


STANDBY_PRICE_UAIT = 100  # a byte; the bench's miners ask 1 (their config, above)


async def connect_standby(
    session: aiohttp.ClientSession, cluster: Cluster, miners: int, count: int
) -> list[Any]:
    """`count` more free miners that serve echo above the bench jobs' max_price: what a
    marketplace with thousands of miners online asks of every plan, while the bench's own
    miners still run every job."""
    from protocol.messages import Advert, GpuInfo, ModelOffer

    offer = ModelOffer("echo", "echo", "byte", STANDBY_PRICE_UAIT)
    advert = Advert((GpuInfo("cpu", 0, 1),), (offer,), 4, "bench-standby")
    log(f"connecting {count} standby miners")
    sockets, failures = await connect_idle_miners(cluster, count, advert, resume=True)
    if failures:
        raise SystemExit(f"bench: {len(failures)} standby miners failed: {failures[0]!r}")
    await wait_ready(session, cluster, miners + count)
    return sockets


async def run_connections(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    """K idle miners connected at once (one process, real handshakes); RSS per miner."""
    from protocol.messages import Advert, GpuInfo, ModelOffer

    cluster.start_coordinator()
    assert cluster.coordinator is not None
    await asyncio.sleep(1.5)
    idle = proc_stats(cluster.coordinator.pid)
    advert = Advert((GpuInfo("cpu", 0, 1),), (ModelOffer("echo", "echo", "byte", 1),), 1, "bench")
    sockets, failures = await connect_idle_miners(cluster, args.connections, advert, resume=False)
    await asyncio.sleep(2)
    loaded = proc_stats(cluster.coordinator.pid)
    for ws in sockets:
        await ws.close()
    per_miner_kib = (loaded["rss_mib"] - idle["rss_mib"]) * 1024 / max(len(sockets), 1)
    return {
        "connected": len(sockets),
        "failed": len(failures),
        "first_failure": repr(failures[0]) if failures else None,
        "coordinator_rss_mib": {
            "idle": round(idle["rss_mib"], 1),
            "connected": round(loaded["rss_mib"], 1),
        },
        "rss_per_miner_kib": round(per_miner_kib, 1),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop: clients")
    parser.add_argument("--offered-rate", type=float, default=0.0, help="open loop: jobs/s")
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="submit this many jobs a request (POST /v1/jobs/batch, 1-100) and follow them "
        "on one stream of all jobs; closed loop: each client waits for its whole batch",
    )
    parser.add_argument(
        "--stream-events",
        choices=("ends", "all"),
        default="ends",
        help="with --batch: the stream of all jobs sends only their ends (?status=completed,"
        "failed,cancelled,timed_out; round 25 on) or every status and progress event",
    )
    parser.add_argument("--miners", type=int, default=2)
    parser.add_argument(
        "--standby-miners",
        type=int,
        default=0,
        help="K more free miners connected that the jobs' max_price rules out: every plan "
        "weighs them (load modes)",
    )
    parser.add_argument(
        "--unserved-jobs",
        type=int,
        default=0,
        help="K jobs for a model no miner serves, queued before the load and cancelled "
        "after it (load modes)",
    )
    parser.add_argument("--miner-concurrency", type=int, default=64)
    parser.add_argument("--input-bytes", type=int, default=16)
    parser.add_argument("--faucet-calls", type=int, default=1)
    parser.add_argument(
        "--wallets",
        type=int,
        default=1,
        help="client keys (wallets) the load is spread over: each its own clients (closed "
        "loop) or share of the rate (open loop), its own event streams and account rows",
    )
    parser.add_argument("--connections", type=int, default=0, help="connections mode: K miners")
    parser.add_argument("--smoke", action="store_true", help="3 s, 1 miner, 4 clients (CI)")
    parser.add_argument("--profile", default="", help="run the coordinator under cProfile")
    parser.add_argument(
        "--coordinator-python",
        default="",
        help="run the coordinator with this interpreter (a venv with the project installed; "
        "default: the bench's own)",
    )
    parser.add_argument(
        "--http-connections", type=int, default=128, help="client keep-alive connection pool"
    )
    parser.add_argument(
        "--drain-seconds", type=float, default=120.0, help="wait this long for the backlog"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.batch <= 100:
        parser.error("--batch takes 1 to 100 jobs a request (0: one job a request)")
    if not 1 <= args.miner_concurrency <= MAX_CONCURRENCY:
        # A miner refuses such a config and never connects (the bench only saw that).
        parser.error(f"--miner-concurrency takes 1 to {MAX_CONCURRENCY} slots a miner")
    if args.coordinator_python and not os.access(args.coordinator_python, os.X_OK):
        parser.error(f"--coordinator-python: {args.coordinator_python} is not an executable")
    if args.smoke:
        args.duration, args.miners, args.concurrency = 3.0, 1, 4
        args.miner_concurrency = 4
    if args.wallets < 1 or (not args.offered_rate and args.wallets > args.concurrency):
        parser.error("--wallets takes 1 to --concurrency wallets (each needs a client)")
    return args


async def main_async(argv: list[str]) -> int:
    args = parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    workdir = Path(tempfile.mkdtemp(prefix="ait-bench-"))
    db_url = await create_pg_database() if args.db == "postgresql" else ""
    cluster = Cluster(args, workdir, db_url)
    try:
        if args.connections:
            result = await run_connections(args, cluster)
        else:
            result = await run_load(args, cluster)
    finally:
        cluster.stop()
        if db_url:
            await drop_pg_database(db_url)
    report = {
        "mode": "connections" if args.connections else ("open" if args.offered_rate else "closed"),
        "config": {k: v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(args.coordinator_python),
        "workdir": str(workdir),
        **result,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    sys.exit(asyncio.run(main_async(sys.argv[1:])))
