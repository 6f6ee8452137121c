"""Real processes for the fault tests: a `coordinator serve` subprocess and `miner run`
subprocesses (echo runtime) on 127.0.0.1, that a test can SIGKILL and restart on the same
data, plus an HTTP client and the ledger audit every fault test ends with.

Nothing here is a stand-in: the processes are the installed commands, the audit reads only
the public API (jobs, balances, the signed block log) and runs `chain.verify.verify_chain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chain.ledger import TREASURY_ADDRESS
from chain.verify import verify_chain
from coordinator.db.database import Database
from coordinator.service.keys import create_key

BIN = Path(sys.executable).parent
TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out"})
ECHO_PRICE_AIT = "0.000001"  # per output byte


def soak() -> bool:
    """AIT_SOAK=1: the long run (more kills, requests and steps)."""
    return os.environ.get("AIT_SOAK") == "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Cluster:
    """One coordinator process and any number of miner processes, all killable."""

    workdir: Path
    db_url: str = ""  # empty: SQLite under the data dir
    lease_seconds: float = 2.0
    heartbeat_seconds: float = 0.5
    max_attempts: int = 3
    port: int = field(default_factory=free_port)
    coordinator: subprocess.Popen[bytes] | None = None
    miners: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    coordinator_starts: int = 0
    stop_s: float = 0.0  # how long the last stop() took (SIGTERM to every exit)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.workdir / "coordinator.toml"
        db_line = f'db = "{self.db_url}"\n' if self.db_url else ""
        self.config.write_text(
            f'data_dir = "{self.workdir / "data"}"\n{db_line}'
            f"lease_seconds = {self.lease_seconds}\nheartbeat_seconds = {self.heartbeat_seconds}\n"
            f"max_attempts = {self.max_attempts}\nblock_interval_seconds = 0.2\n"
            "[rate_limits.client]\nper_minute = 0\nper_hour = 0\n"
            "[rate_limits.miner]\nper_minute = 0\nper_hour = 0\n"
        )

    # -- keys -------------------------------------------------------------------------
    async def create_keys(self, *roles: str) -> list[dict[str, Any]]:
        """API keys on the cluster's database, each with a fresh address, made with the
        service `coordinator keys create` runs (one process start instead of one each:
        the CI machine is small)."""
        url = self.db_url or f"sqlite+aiosqlite:///{self.workdir / 'data' / 'coordinator.db'}"
        db = await Database.open(url, start_writer=True)
        try:
            out = []
            for role in roles:
                api_key, rec, _ = await create_key(db, role, None, None, self.workdir / "wallets")
                out.append({"api_key": api_key, "role": rec.role, "address": rec.address})
            return out
        finally:
            await db.close()

    # -- coordinator ------------------------------------------------------------------
    def start_coordinator(self) -> None:
        assert self.coordinator is None or self.coordinator.poll() is not None
        self.coordinator_starts += 1
        log = (self.workdir / "coordinator.log").open("ab")
        self.coordinator = subprocess.Popen(
            [
                *(str(BIN / "coordinator"), "serve", "--config", str(self.config)),
                *("--port", str(self.port), "--log-level", "warning"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill_coordinator(self) -> None:
        assert self.coordinator is not None and self.coordinator.poll() is None
        self.coordinator.send_signal(signal.SIGKILL)
        self.coordinator.wait(timeout=10)

    async def wait_healthy(self, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.coordinator is not None
                if self.coordinator.poll() is not None:
                    raise AssertionError("coordinator exited:\n" + self.log_tail())
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError("coordinator not ready in time:\n" + self.log_tail())

    def log_tail(self) -> str:
        return _tail(self.workdir / "coordinator.log")

    # -- miners -----------------------------------------------------------------------
    def start_miner(self, index: int, api_key: str, concurrency: int = 2) -> None:
        """Start (or restart, same key file so the same miner id) miner `index`."""
        old = self.miners.get(index)
        assert old is None or old.poll() is not None
        config = self.workdir / f"miner{index}.toml"
        config.write_text(
            f'coordinator = "{self.url}"\napi_key = "{api_key}"\n'
            f'key_file = "{self.workdir / f"miner{index}.key"}"\ndevice = "cpu"\n'
            f'max_concurrency = {concurrency}\nwork_dir = "{self.workdir / f"work{index}"}"\n'
            "shutdown_grace_s = 1\n"
            f'[[models]]\nname = "echo"\nruntime = "echo"\nprice = {ECHO_PRICE_AIT}\n'
        )
        log = (self.workdir / f"miner{index}.log").open("ab")
        self.miners[index] = subprocess.Popen(
            [str(BIN / "miner"), "run", "--config", str(config), "--log-level", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill_miner(self, index: int) -> bool:
        """SIGKILL miner `index`; False when it had already exited (a bug: it should not)."""
        process = self.miners[index]
        if process.poll() is not None:
            return False
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return True

    def miner_log_tail(self, index: int) -> str:
        return _tail(self.workdir / f"miner{index}.log")

    def stop(self) -> None:
        processes = [*self.miners.values()]
        if self.coordinator is not None:
            processes.append(self.coordinator)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                what = " ".join(str(arg) for arg in list(process.args)[:4])  # type: ignore[arg-type]
                print(f"RELIABILITY slow_stop: {what} (pid {process.pid}) ignored SIGTERM 15 s")
                process.kill()
                process.wait(timeout=5)
        self.stop_s = round(time.monotonic() - started, 2)


class Api:
    """Small JSON client for the tests (one key); never retries, so failures show."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str) -> None:
        self.session, self.url = session, url
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=body, headers=self.headers
        ) as response:
            data = await response.json(content_type=None)
            return response.status, data

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        assert status in (200, 201), (method, path, status, data)
        return data

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job of the caller (paged list)."""
        out: list[dict[str, Any]] = []
        while True:
            page = await self.ok("GET", f"/v1/jobs?limit=100&offset={len(out)}")
            out.extend(page["jobs"])
            if not page["has_more"]:
                return out

    async def connected_miners(self) -> int:
        return len((await self.ok("GET", "/v1/miners"))["miners"])

    async def blocks(self, chain_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = await self.ok("GET", f"/v1/chain/{chain_id}/blocks?from_height={len(out)}")
            if not page["blocks"]:
                return out
            out.extend(page["blocks"])


async def wait_for(check: Any, within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            value = await check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.2)


async def drain(client: Api, within_s: float) -> list[dict[str, Any]]:
    """Wait until every job of the client has ended; the jobs."""

    async def all_ended() -> list[dict[str, Any]] | None:
        jobs = await client.jobs()
        return jobs if all(j["status"] in TERMINAL for j in jobs) else None

    jobs: list[dict[str, Any]] = await wait_for(all_ended, within_s, "every job to end")
    return jobs


@dataclass
class AuditReport:
    jobs: int
    statuses: dict[str, int]
    blocks: int
    entries: int
    paid_uait: int
    invariant_checks: int
    reasons: dict[str, int]  # why jobs that did not complete ended (first 60 chars)


async def audit_ledger(
    admin: Api,
    client: Api,
    client_address: str,
    miner_address: str,
    minted_uait: int,
    chain_id: str = "ait-devnet",
) -> AuditReport:
    """After a drained run: every job ended with a reason, each settled exactly once (one
    hold, then one pay xor one void), the miner was paid exactly the completed jobs' costs,
    no escrow is left, and the signed block log verifies against the live balances."""
    checks = 0
    jobs = {j["job_id"]: j for j in await client.jobs()}
    for job_id in jobs:  # the full view (error, attempts, cost)
        jobs[job_id] = await client.ok("GET", f"/v1/jobs/{job_id}")
    for job in jobs.values():
        assert job["status"] in TERMINAL, job
        if job["status"] == "completed":
            assert job["cost"] is not None and job["result"] is not None, job
        else:
            assert job["error"], f"job ended {job['status']} without a reason: {job}"
        checks += 1

    chains = await admin.ok("GET", "/v1/chains")
    entry = next(c for c in chains["chains"] if c.get("id", c.get("chain_id")) == chain_id)
    key = entry["coordinator_public_key"]

    async def sealed_and_verified() -> tuple[list[dict[str, Any]], Any] | None:
        blocks = await admin.blocks(chain_id)
        live: dict[str, dict[str, int]] = {}
        for address in (client_address, miner_address, TREASURY_ADDRESS):
            bal = await admin.ok("GET", f"/v1/wallets/{address}/balance?chain_id={chain_id}")
            live[address] = {"available": bal["available_uait"], "held": bal["held_uait"]}
        report = verify_chain(blocks, key, live, chain_id=chain_id)
        return (blocks, report) if report.ok else None

    found = await wait_for(sealed_and_verified, 15, "the block log to verify (verify_chain)")
    blocks, report = found
    checks += 1

    per_job: dict[str, Counter[str]] = {}
    paid = 0
    seen: set[str] = set()
    for block in blocks:
        for e in block["entries"]:
            assert e["transfer_id"] not in seen, f"transfer twice in the log: {e['transfer_id']}"
            seen.add(e["transfer_id"])
            if e["job_id"] is not None:
                per_job.setdefault(e["job_id"], Counter())[e["kind"]] += 1
            if e["kind"] == "pay":
                assert e["credit"]["address"] == miner_address, e
                paid += e["amount_uait"]
                job = jobs[e["job_id"]]
                assert round(job["cost"] * 1_000_000) == e["amount_uait"], (job, e)
    for job_id, job in jobs.items():
        kinds = per_job.get(job_id, Counter())
        assert kinds["hold"] == 1, (job_id, kinds)
        if job["status"] == "completed":
            assert kinds["pay"] == 1 and kinds["void"] == 0, (job_id, kinds)
        else:
            assert kinds["pay"] == 0 and kinds["void"] == 1, (job_id, kinds)
        checks += 1
    assert set(per_job) <= set(jobs), "ledger entries for jobs the client does not have"

    client_bal = await admin.ok("GET", f"/v1/wallets/{client_address}/balance?chain_id={chain_id}")
    miner_bal = await admin.ok("GET", f"/v1/wallets/{miner_address}/balance?chain_id={chain_id}")
    assert client_bal["held_uait"] == 0, client_bal
    assert miner_bal["available_uait"] == paid and miner_bal["held_uait"] == 0, miner_bal
    assert client_bal["available_uait"] + paid == minted_uait, (client_bal, paid, minted_uait)
    checks += 3
    return AuditReport(
        jobs=len(jobs),
        statuses=dict(Counter(j["status"] for j in jobs.values())),
        blocks=report.blocks,
        entries=report.entries,
        paid_uait=paid,
        invariant_checks=checks,
        reasons=dict(
            Counter(
                f"{j['status']}: {j['error'][:60]}"
                for j in jobs.values()
                if j["status"] != "completed"
            )
        ),
    )


def record(name: str, figures: dict[str, Any]) -> None:
    """Print the run's figures (docs/reliability.md quotes them); `-s` or -rP shows them."""
    print(f"RELIABILITY {name}: {json.dumps(figures, sort_keys=True)}", flush=True)
