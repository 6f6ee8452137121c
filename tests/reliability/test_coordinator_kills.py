"""SIGKILL the `coordinator serve` process under load and restart it on the same data, on
SQLite and on PostgreSQL (SPEC §4, §6, §8).

After each restart (with submissions paused): every job answered 201 still exists, and the
client's held balance equals the estimated cost of its unfinished jobs; the miner daemons
reconnect by themselves. At the end every job ended, each settled exactly once, and the
signed block log verifies against the live balances.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from reliability_cluster import TERMINAL, Api, Cluster, audit_ledger, drain, record, soak, wait_for

from protocol.money import ait_to_uait

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

MINERS = 2
FUNDS_AIT = 1000


class Load:
    """One submitter at ~4 jobs/s; pausable; counts what the API answered."""

    def __init__(self, client: Api, rng: random.Random) -> None:
        self.client, self.rng = client, rng
        self.accepted: list[str] = []
        self.refused = 0  # connection refused / reset while the coordinator was down
        self.running = asyncio.Event()
        self.running.set()
        self.stop = asyncio.Event()
        self.in_flight = 0

    async def submitter(self) -> None:
        while not self.stop.is_set():
            await self.running.wait()
            if self.stop.is_set():
                return
            body: dict[str, Any] = {
                "model": "echo",
                "input": "y" * self.rng.randint(1, 32),
                "params": {"delay_ms": self.rng.randint(100, 600)},
            }
            self.in_flight += 1
            try:
                status, data = await self.client.call("POST", "/v1/jobs", body)
            except (aiohttp.ClientError, OSError):
                self.refused += 1
                await asyncio.sleep(0.2)
                continue
            finally:
                self.in_flight -= 1
            assert status == 201, data
            self.accepted.append(data["job_id"])
            await asyncio.sleep(self.rng.uniform(0.1, 0.4))

    async def pause(self) -> None:
        self.running.clear()
        for _ in range(3000):  # bounded: a submit answers or fails within the client timeout
            if not self.in_flight:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("a submit never finished")


async def _escrow_matches_unfinished(admin: Api, client: Api, address: str) -> int:
    """held == sum of the estimated costs of queued and running jobs. With submissions
    paused jobs only leave the unfinished set, so if it is the same before and after the
    balance read, the balance saw exactly that set. Returns how many were unfinished."""
    for _ in range(50):
        before = {j["job_id"]: j for j in await client.jobs() if j["status"] not in TERMINAL}
        balance = await admin.ok("GET", f"/v1/wallets/{address}/balance")
        after = {j["job_id"] for j in await client.jobs() if j["status"] not in TERMINAL}
        if set(before) == after:
            expected = sum(ait_to_uait(str(j["estimated_cost"])) for j in before.values())
            assert balance["held_uait"] == expected, (balance, len(before), expected)
            assert balance["balance_uait"] == balance["available_uait"] + balance["held_uait"]
            return len(before)
        await asyncio.sleep(0.05)
    raise AssertionError("jobs never held still long enough to compare escrow")


async def test_coordinator_sigkills_keep_jobs_and_escrow(
    make_cluster: Callable[..., Cluster], db_url: str, rng: random.Random
) -> None:
    kills_wanted = 30 if soak() else 5
    cluster = make_cluster("coordinator-kills", db_url, lease_seconds=3.0, heartbeat_seconds=0.5)
    admin_key, client_key, miner_key = await cluster.create_keys("admin", "client", "miner")
    cluster.start_coordinator()
    await cluster.wait_healthy()
    for index in range(MINERS):
        cluster.start_miner(index, miner_key["api_key"], concurrency=4)

    async with aiohttp.ClientSession() as session:
        admin = Api(session, cluster.url, admin_key["api_key"])
        client = Api(session, cluster.url, client_key["api_key"])
        await client.ok(
            "POST", "/v1/faucet", {"address": client_key["address"], "amount": FUNDS_AIT}
        )

        async def all_connected() -> bool:
            return await admin.connected_miners() >= MINERS

        async def one_connected() -> bool:
            return await admin.connected_miners() >= 1

        await wait_for(all_connected, 60, "the miners to connect")
        load = Load(client, rng)
        submitters = [asyncio.create_task(load.submitter())]
        kills, unfinished_at_restart, reconnect_s = 0, [], []
        try:
            while kills < kills_wanted:
                await asyncio.sleep(rng.uniform(0.8, 2.0))
                cluster.kill_coordinator()
                kills += 1
                answered = list(load.accepted)
                await asyncio.sleep(rng.uniform(0, 0.5))
                cluster.start_coordinator()
                await cluster.wait_healthy()
                await load.pause()
                jobs = {j["job_id"] for j in await client.jobs()}
                missing = set(answered) - jobs
                assert not missing, f"jobs answered 201 lost by kill {kills}: {sorted(missing)}"
                unfinished_at_restart.append(
                    await _escrow_matches_unfinished(admin, client, client_key["address"])
                )
                load.running.set()
                # keep the kills coming while a miner serves (all of them: checked below)
                started = time.monotonic()
                await wait_for(one_connected, 60, f"a miner to reconnect after kill {kills}")
                reconnect_s.append(round(time.monotonic() - started, 2))
        finally:
            load.stop.set()
            load.running.set()
            await asyncio.gather(*submitters)

        started = time.monotonic()
        await wait_for(all_connected, 60, "every miner to reconnect after the last kill")
        reconnect_s.append(round(time.monotonic() - started, 2))
        jobs_after = await drain(client, within_s=120)
        assert set(load.accepted) <= {j["job_id"] for j in jobs_after}
        report = await audit_ledger(
            admin, client, client_key["address"], miner_key["address"], FUNDS_AIT * 1_000_000
        )
        assert report.statuses.get("completed", 0) > 0, report
        for index, process in cluster.miners.items():
            assert process.poll() is None, cluster.miner_log_tail(index)

    record(
        f"coordinator_kills[{db_url.split(':')[0]}]",
        {
            "sigkills": kills,
            "jobs_answered_201": len(load.accepted),
            "submits_refused_while_down": load.refused,
            "unfinished_jobs_at_each_restart": unfinished_at_restart,
            "miner_reconnect_s": reconnect_s,
            "statuses": report.statuses,
            "reasons": report.reasons,
            "blocks": report.blocks,
            "ledger_entries": report.entries,
            "invariant_checks": report.invariant_checks + kills * 2,
        },
    )
