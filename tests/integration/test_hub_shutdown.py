"""A coordinator that stops while a claim is committing (SQLite and PostgreSQL): the claim
commits after the miners were disconnected, so it cannot be sent; it must go back to the
queue before the database closes, not wait for its lease to run out (nor cost the job an
attempt when its miner resumes elsewhere)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from ait_harness import NO_RATE_LIMITS, Coordinator
from api_helpers import call
from sqlalchemy import select
from test_hub_faults import RawMiner
from test_hub_flow import HUB_SETTINGS, until

from coordinator.app import create_app
from coordinator.db import schema
from coordinator.db.database import Database
from coordinator.hub import HUB
from coordinator.settings import Settings
from protocol.messages import Release


class _Held:
    """A write operation that keeps its transaction open until `leave` is set."""

    def __init__(self) -> None:
        self.entered, self.leave = asyncio.Event(), asyncio.Event()

    async def op(self, _conn: Any) -> None:
        self.entered.set()
        await self.leave.wait()


async def test_a_claim_committed_as_the_coordinator_stops_goes_back_to_the_queue(
    db_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", db=db_url, rate_limits=NO_RATE_LIMITS, **HUB_SETTINGS
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    gate, hold = _Held(), _Held()
    stopping: asyncio.Task[None] | None = None
    try:
        coordinator = Coordinator(url, settings, app)
        miner_key = await coordinator.create_key("miner")
        client = await coordinator.create_key("client")
        await coordinator.fund(client.address, 100)
        miner = await RawMiner.connect(url, miner_key.api_key)
        hub = app[HUB]
        miner_id = miner.welcome.miner_id
        conn = hub.registry.get(miner_id)
        assert conn is not None
        await until(lambda: _true(conn.resumed), 5, "the miner to resume")
        await miner.send(Release((), "test", draining=True))  # it takes no job for now
        await until(lambda: _true(conn.draining), 5, "the miner to drain")
        status, job, _ = await call(
            http, "POST", url + "/v1/jobs", client, json={"model": "echo", "input": {"n": 1}}
        )
        assert status == 201, job
        job_id = str(job["job_id"])

        # The claims' writer (on SQLite the only one) is kept busy by `gate`, so the
        # dispatcher's claim queues behind it, and `hold` behind the claim: the claim then
        # runs in a transaction that `hold` keeps open.
        db = coordinator.db
        writer = db.writers[-1]
        gating = asyncio.create_task(writer.submit(gate.op))
        await asyncio.wait_for(gate.entered.wait(), 10)
        await miner.send(Release((), "test", draining=False))  # free: the dispatcher plans
        await until(lambda: _true(writer.waiting == 1), 5, "the dispatcher's claim to queue")
        holding = asyncio.create_task(writer.submit(hold.op))
        gate.leave.set()
        await gating
        await asyncio.wait_for(hold.entered.wait(), 10)
        assert await _job(db, job_id) == ("queued", None, 0)  # the claim is not committed

        stopping = asyncio.create_task(runner.cleanup())
        # The coordinator closes the miners' sockets, then stops its hub; only then does
        # the claim commit, for a miner that is gone.
        await until(
            lambda: _true(hub.registry.get(miner_id) is None and hub.stopping),
            10,
            "the miner to be gone and the hub to stop",
        )
        hold.leave.set()
        await holding
        await asyncio.wait_for(stopping, 20)
    finally:
        gate.leave.set()
        hold.leave.set()
        if stopping is None:
            await runner.cleanup()
    reopened = await Database.open(db_url)
    try:
        assert await _job(reopened, job_id) == ("queued", None, 1)  # claimed, given back
    finally:
        await reopened.close()


async def test_a_lease_made_at_admission_as_the_coordinator_stops_goes_back_to_the_queue(
    db_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The same for a submit whose commit leases its job to a free miner (dispatch at
    admission): the commit lands after the miners were disconnected."""
    settings = Settings(
        data_dir=tmp_path / "data", db=db_url, rate_limits=NO_RATE_LIMITS, **HUB_SETTINGS
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    gate, hold = _Held(), _Held()
    stopping: asyncio.Task[None] | None = None
    try:
        coordinator = Coordinator(url, settings, app)
        miner_key = await coordinator.create_key("miner")
        client = await coordinator.create_key("client")
        await coordinator.fund(client.address, 100)
        miner = await RawMiner.connect(url, miner_key.api_key)
        hub = app[HUB]
        miner_id = miner.welcome.miner_id
        conn = hub.registry.get(miner_id)
        assert conn is not None
        await until(lambda: _true(conn.free_slots == 1), 5, "the miner to resume")

        writer = coordinator.db.writer  # the submits' writer
        gating = asyncio.create_task(writer.submit(gate.op))
        await asyncio.wait_for(gate.entered.wait(), 10)
        submit = asyncio.create_task(
            call(http, "POST", url + "/v1/jobs", client, json={"model": "echo", "input": 1})
        )
        await until(lambda: _true(writer.waiting == 1), 5, "the admission to queue")
        assert conn.reserved == 1  # the admission plans the job onto the free miner
        holding = asyncio.create_task(writer.submit(hold.op))
        gate.leave.set()
        await gating
        await asyncio.wait_for(hold.entered.wait(), 10)

        stopping = asyncio.create_task(runner.cleanup())
        await until(lambda: _true(hub.registry.get(miner_id) is None), 10, "the miner to go")
        hold.leave.set()
        await holding
        status, job, _ = await submit
        assert status == 201, job
        await asyncio.wait_for(stopping, 20)
    finally:
        gate.leave.set()
        hold.leave.set()
        if stopping is None:
            await runner.cleanup()
    reopened = await Database.open(db_url)
    try:
        assert await _job(reopened, str(job["job_id"])) == ("queued", None, 1)
    finally:
        await reopened.close()


async def _job(db: Database, job_id: str) -> tuple[str, int | None, int]:
    jobs = schema.jobs.c
    async with db.read() as read:
        row = (
            await read.execute(
                select(jobs.status, jobs.lease_expires_at_ms, jobs.attempts).where(
                    jobs.job_id == job_id
                )
            )
        ).one()
    return row.status, row.lease_expires_at_ms, row.attempts


async def _true(value: bool) -> bool:
    return value
