"""A coordinator that stops while a claim is committing (SQLite and PostgreSQL): the claim
commits after the miners were disconnected, so it cannot be sent; it must go back to the
queue before the database closes, not wait for its lease to run out (nor cost the job an
attempt when its miner resumes elsewhere)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from ait_harness import NO_RATE_LIMITS, Coordinator, KeyInfo
from api_helpers import call
from sqlalchemy import select
from test_hub_faults import RawMiner
from test_hub_flow import HUB_SETTINGS, until

from coordinator.app import create_app
from coordinator.db import schema
from coordinator.db.database import Database
from coordinator.hub import HUB
from coordinator.hub import dispatcher as dispatcher_module
from coordinator.hub.dispatcher import Hub
from coordinator.hub.registry import MinerConn
from coordinator.settings import Settings
from protocol.messages import Release


class _Held:
    """A write operation that keeps its transaction open until `leave` is set."""

    def __init__(self) -> None:
        self.entered, self.leave = asyncio.Event(), asyncio.Event()

    async def op(self, _conn: Any) -> None:
        self.entered.set()
        await self.leave.wait()


@dataclasses.dataclass
class _Running:
    """A coordinator this test stops itself, a funded client and one resumed raw miner."""

    runner: web.AppRunner
    url: str
    coordinator: Coordinator
    hub: Hub
    client: KeyInfo
    miner: RawMiner
    conn: MinerConn
    stopping: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """What the server's exit does: close the miners' sockets, finish the requests in
        flight, stop the hub, close the database."""
        self.stopping = asyncio.create_task(self.runner.cleanup())

    async def miner_gone(self) -> bool:
        return self.hub.registry.get(self.conn.miner_id) is None


async def _start(db_url: str, tmp_path: Path) -> _Running:
    settings = Settings(
        data_dir=tmp_path / "data", db=db_url, rate_limits=NO_RATE_LIMITS, **HUB_SETTINGS
    )
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    coordinator = Coordinator(url, settings, app)
    miner_key = await coordinator.create_key("miner")
    client = await coordinator.create_key("client")
    await coordinator.fund(client.address, 100)
    miner = await RawMiner.connect(url, miner_key.api_key)
    hub = app[HUB]
    conn = hub.registry.get(miner.welcome.miner_id)
    assert conn is not None
    running = _Running(runner, url, coordinator, hub, client, miner, conn)
    await until(lambda: _true(conn.resumed), 5, "the miner to resume")
    return running


async def test_a_claim_committed_as_the_coordinator_stops_goes_back_to_the_queue(
    db_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    gate, hold = _Held(), _Held()
    r = await _start(db_url, tmp_path)
    try:
        job_id, holding = await _claim_held_open(r, http, gate, hold)
        await r.stop()
        # The miners' sockets are closed, then the hub stops; only then does the claim
        # commit, for a miner that is gone.
        await until(r.miner_gone, 10, "the miner to go")
        await until(lambda: _true(r.hub.stopping), 10, "the hub to stop")
        await _commit_and_stop(r, hold, holding)
    finally:
        await _finish(r, gate, hold)
    assert await _job_after(db_url, job_id) == ("queued", None, 1)  # claimed, given back


async def test_a_claim_that_outlasts_the_drain_window_does_not_hold_the_hubs_stop(
    db_url: str, tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub waits for the dispatcher's claim in progress only STOP_DRAIN_S: a claim
    still uncommitted then is left to commit on its own, and its job stays leased to the
    gone miner until the lease runs out (the reaper then queues it again)."""
    monkeypatch.setattr(dispatcher_module, "STOP_DRAIN_S", 0.2)
    gate, hold = _Held(), _Held()
    r = await _start(db_url, tmp_path)
    [dispatching] = [t for t in asyncio.all_tasks() if t.get_name() == "ait-dispatcher"]
    try:
        job_id, holding = await _claim_held_open(r, http, gate, hold)
        await r.stop()
        await until(lambda: _true(r.hub.stopping), 10, "the hub to stop")
        # The claim's transaction is still open (`hold`), yet the dispatcher is stopped.
        await until(lambda: _true(dispatching.done()), 10, "the drain window to pass")
        assert dispatching.cancelled() and not hold.leave.is_set()
        await _commit_and_stop(r, hold, holding)
    finally:
        await _finish(r, gate, hold)
    status, lease_expires_at_ms, attempts = await _job_after(db_url, job_id)
    assert (status, attempts) == ("running", 1) and lease_expires_at_ms is not None


async def _claim_held_open(
    r: _Running, http: aiohttp.ClientSession, gate: _Held, hold: _Held
) -> tuple[str, asyncio.Task[None]]:
    """A submitted job whose claim by the dispatcher has run but not committed: it runs in
    a transaction that `hold` keeps open (the task that ends with it is returned)."""
    await _release(r, draining=True)  # it takes no job for now
    status, job, _ = await call(
        http, "POST", r.url + "/v1/jobs", r.client, json={"model": "echo", "input": 1}
    )
    assert status == 201, job
    job_id = str(job["job_id"])

    # The claims' writer (on SQLite the only one) is kept busy by `gate`, so the
    # dispatcher's claim queues behind it, and `hold` behind the claim: the claim then
    # runs in a transaction that `hold` keeps open.
    db = r.coordinator.db
    writer = db.writers[-1]
    gating = asyncio.create_task(writer.submit(gate.op))
    await asyncio.wait_for(gate.entered.wait(), 10)
    await _release(r, draining=False)  # free: the dispatcher plans
    await until(lambda: _true(writer.waiting == 1), 5, "the dispatcher's claim to queue")
    assert r.conn.reserved == 1
    holding = asyncio.create_task(writer.submit(hold.op))
    gate.leave.set()
    await gating
    await asyncio.wait_for(hold.entered.wait(), 10)
    assert await _job(db, job_id) == ("queued", None, 0)  # the claim is not committed
    return job_id, holding


async def test_a_lease_made_at_admission_as_the_coordinator_stops_goes_back_to_the_queue(
    db_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The same for a submit whose commit leases its job to a free miner (dispatch at
    admission): the commit lands after the miners were disconnected."""
    gate, hold = _Held(), _Held()
    r = await _start(db_url, tmp_path)
    try:
        writer = r.coordinator.db.writer  # the submits' writer
        gating = asyncio.create_task(writer.submit(gate.op))
        await asyncio.wait_for(gate.entered.wait(), 10)
        submit = asyncio.create_task(
            call(http, "POST", r.url + "/v1/jobs", r.client, json={"model": "echo", "input": 1})
        )
        await until(lambda: _true(writer.waiting == 1), 5, "the admission to queue")
        assert r.conn.reserved == 1  # the admission plans the job onto the free miner
        holding = asyncio.create_task(writer.submit(hold.op))
        gate.leave.set()
        await gating
        await asyncio.wait_for(hold.entered.wait(), 10)

        await r.stop()
        await until(r.miner_gone, 10, "the miner to go")
        hold.leave.set()
        await holding
        status, job, _ = await submit
        assert status == 201, job
        assert r.stopping is not None
        await asyncio.wait_for(r.stopping, 20)
    finally:
        await _finish(r, gate, hold)
    assert await _job_after(db_url, str(job["job_id"])) == ("queued", None, 1)


async def _commit_and_stop(r: _Running, hold: _Held, holding: asyncio.Task[None]) -> None:
    """Let `hold`'s transaction (and the claim run in it) commit, then the stop finish."""
    hold.leave.set()
    await holding
    assert r.stopping is not None
    await asyncio.wait_for(r.stopping, 20)


async def _release(r: _Running, *, draining: bool) -> None:
    """The miner's `release` frame with no jobs: it stops or resumes taking new ones."""
    await r.miner.send(Release((), "test", draining=draining))
    await until(lambda: _true(r.conn.draining == draining), 5, f"draining={draining}")


async def _finish(r: _Running, *held: _Held) -> None:
    for each in held:
        each.leave.set()
    if r.stopping is None:
        await r.runner.cleanup()


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


async def _job_after(db_url: str, job_id: str) -> tuple[str, int | None, int]:
    """The job as the stopped coordinator left it in the database."""
    db = await Database.open(db_url)
    try:
        return await _job(db, job_id)
    finally:
        await db.close()


async def _true(value: bool) -> bool:
    return value
