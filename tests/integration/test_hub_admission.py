"""Dispatch at admission, against a real coordinator (SQLite and PostgreSQL) and real miner
daemons: with the queue empty, a submit's own commit leases its jobs to free miners, so
they run with the dispatcher stopped; jobs beyond the free slots, and every job while
another its miner serves is queued, wait for the dispatcher (a queued job no free miner
serves keeps no one waiting). No slot is promised twice, and the ledger
settles these jobs as it settles the dispatcher's. A lease whose job is cancelled before
its `assign` is written is not sent at all."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_hub_flow import ECHO, Stack, stacks, until

from coordinator.api.jobs import TAKEN_AT_ADMISSION
from coordinator.hub import HUB
from coordinator.hub.registry import MinerConn
from coordinator.service import lifecycle
from coordinator.service.core import Core
from coordinator.service.jobs import MAX_BATCH_JOBS, QUEUED_MODELS_READ
from coordinator.service.lifecycle import MinerIdentity


@pytest.fixture
async def stack(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[Stack]:
    """One stack (SQLite and PostgreSQL), its daemons stopped at the end."""
    async with stacks(coordinator_factory, tmp_path) as make:
        yield await make()


async def stop_dispatcher() -> None:
    """Cancel the coordinator's dispatcher task (it runs in this test's loop): from here on
    a job reaches a miner only if its admission leased it."""
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == "ait-dispatcher"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def conn_of(stack: Stack, miner_id: str) -> MinerConn:
    conn = stack.registry.get(miner_id)
    assert conn is not None
    return conn


async def test_a_free_miner_takes_the_job_in_its_admission_commit(stack: Stack) -> None:
    miner_key, miner_addr = await stack.key("miner")
    d = await stack.daemon(miner_key)
    client_key, client_addr = await stack.client(100)
    await stop_dispatcher()

    sub = await stack.submit(client_key, input={"hello": "world"})
    assert sub["status"] == "queued"  # the answer is the job as accepted
    assert sub["queue_reason"] == TAKEN_AT_ADMISSION
    job = await stack.wait_status(client_key, sub["job_id"], "completed", within_s=10)
    assert job["miner_id"] == d.miner_id and job["attempts"] == 1
    assert job["result"] == {"hello": "world"}
    cost = round(job["cost"] * 1e6)
    after = await stack.balance(client_addr)
    assert after["held"] == 0 and round((100 - after["available"]) * 1e6) == cost
    fee = cost * 1000 // 10_000
    assert round((await stack.balance(miner_addr))["available"] * 1e6) == cost - fee
    assert conn_of(stack, d.miner_id).reserved == 0


async def test_jobs_beyond_the_free_slots_stay_queued(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    d = await stack.daemon(miner_key, max_concurrency=2)
    client_key, _ = await stack.client(100)
    await stop_dispatcher()

    body = {"jobs": [{"model": "echo", "input": {"n": n}} for n in range(5)]}
    accepted = (await stack.call("POST", "/v1/jobs/batch", client_key, body, expect=201))["jobs"]
    ids = [a["job_id"] for a in accepted]
    assert [a["status"] for a in accepted] == ["queued"] * 5
    reasons = [a["queue_reason"] for a in accepted]
    assert reasons[:2] == [TAKEN_AT_ADMISSION] * 2
    assert all(r and r != TAKEN_AT_ADMISSION for r in reasons[2:])
    for job_id in ids[:2]:  # one batch: the oldest first (the scheduler's order)
        await stack.wait_status(client_key, job_id, "completed", within_s=10)
    later = [await stack.job(client_key, job_id) for job_id in ids[2:]]
    assert [j["status"] for j in later] == ["queued"] * 3
    assert all(j["attempts"] == 0 and j["miner_id"] is None for j in later)
    conn = conn_of(stack, d.miner_id)
    assert conn.reserved == 0 and not conn.running


# An echo job no miner here can run (no GPU): it stays queued, for a model they serve.
NEEDS_GPU = {"gpu_type": "h100"}


async def test_a_job_queued_before_keeps_later_ones_out_of_free_slots(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    d = await stack.daemon(miner_key)
    client_key, _ = await stack.client(100)
    await stop_dispatcher()
    # The miner serves echo, so later echo jobs wait their turn behind it.
    waiting = await stack.submit(client_key, requirements=NEEDS_GPU)
    sub = await stack.submit(client_key)
    await asyncio.sleep(0.3)  # a lease made at admission would have reached the miner
    assert sub["queue_reason"] != TAKEN_AT_ADMISSION
    job = await stack.job(client_key, sub["job_id"])
    assert job["status"] == "queued" and job["attempts"] == 0
    assert (await stack.job(client_key, waiting["job_id"]))["status"] == "queued"
    conn = conn_of(stack, d.miner_id)
    assert conn.reserved == 0 and not conn.running


async def test_a_queued_job_of_any_model_its_miner_serves_keeps_later_ones_out(
    stack: Stack,
) -> None:
    """The miner serves echo and echo-b: a queued echo-b job goes to it before a new echo
    job, so the echo job is not leased at admission."""
    miner_key, _ = await stack.key("miner")
    echo_b = dataclasses.replace(ECHO, name="echo-b")
    d = await stack.daemon(miner_key, models=(ECHO, echo_b), max_concurrency=2)
    client_key, _ = await stack.client(100)
    await stop_dispatcher()
    await stack.submit(client_key, model="echo-b", requirements=NEEDS_GPU)
    sub = await stack.submit(client_key)
    assert sub["queue_reason"] != TAKEN_AT_ADMISSION
    assert (await stack.job(client_key, sub["job_id"]))["status"] == "queued"
    assert await _idle(conn_of(stack, d.miner_id))


async def test_a_queued_job_no_miner_serves_keeps_no_one_waiting(stack: Stack) -> None:
    """A job for a model nobody offers waits for a miner that serves it; jobs the free
    miners can run are still leased in their admission commit, the dispatcher stopped."""
    miner_key, _ = await stack.key("miner")
    d = await stack.daemon(miner_key, max_concurrency=3)
    client_key, _ = await stack.client(100)
    waiting = await stack.submit(client_key, model="nobody", input="x")
    hub = stack.app[HUB]

    async def planned() -> bool:  # a dispatcher round read it and left it queued
        return hub.waiting_models == frozenset({"nobody"})

    await until(planned, 5, "a planning round to leave the job queued")
    await stop_dispatcher()
    subs = [await stack.submit(client_key, input={"n": n}) for n in range(3)]
    assert [s["queue_reason"] for s in subs] == [TAKEN_AT_ADMISSION] * 3
    for sub in subs:
        done = await stack.wait_status(client_key, sub["job_id"], "completed", within_s=10)
        assert done["miner_id"] == d.miner_id and done["attempts"] == 1
    assert (await stack.job(client_key, waiting["job_id"]))["status"] == "queued"
    assert await _idle(conn_of(stack, d.miner_id))


async def test_a_queue_longer_than_admission_reads_keeps_every_new_job_out(
    stack: Stack,
) -> None:
    """Admission reads the models of QUEUED_MODELS_READ queued jobs at most: past that it
    cannot know what waits, so it leases nothing, whatever the queued jobs' model."""
    miner_key, _ = await stack.key("miner")
    d = await stack.daemon(miner_key)
    client_key, _ = await stack.client(100)
    await stop_dispatcher()
    nobody = {"model": "nobody", "input": "x"}
    for left in range(QUEUED_MODELS_READ + 1, 0, -MAX_BATCH_JOBS):
        body = {"jobs": [nobody] * min(left, MAX_BATCH_JOBS)}
        await stack.call("POST", "/v1/jobs/batch", client_key, body, expect=201)
    sub = await stack.submit(client_key)
    assert sub["queue_reason"] != TAKEN_AT_ADMISSION
    assert await _idle(conn_of(stack, d.miner_id))


async def test_admission_and_dispatcher_never_fill_one_slot_twice(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    d = await stack.daemon(miner_key, max_concurrency=3)
    client_key, _ = await stack.client(1000)
    conn = conn_of(stack, d.miner_id)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(conn.running) + conn.reserved)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        subs = await asyncio.gather(
            *(stack.submit(client_key, params={"delay_ms": 50}) for _ in range(30))
        )
        for sub in subs:
            await stack.wait_status(client_key, sub["job_id"], "completed", within_s=30)
    finally:
        watcher.cancel()
    assert 0 < most <= 3
    await until(lambda: _idle(conn), 5, "slots given back")


async def _idle(conn: MinerConn) -> bool:
    return conn.reserved == 0 and not conn.running


async def test_a_job_leased_at_admission_never_passes_one_queued_beside_it(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    await stack.daemon(miner_key)
    client_key, _ = await stack.client(100)
    await stop_dispatcher()

    async def batch(*jobs: tuple[str, str]) -> list[dict[str, Any]]:
        """Jobs by (kind, priority); kind "gpu" is an echo job that needs a GPU."""
        body = {
            "jobs": [
                {"model": "echo", "input": "x", "priority": p, "requirements": NEEDS_GPU}
                if kind == "gpu"
                else {"model": kind, "input": "x", "priority": p}
                for kind, p in jobs
            ]
        }
        answer = await stack.call("POST", "/v1/jobs/batch", client_key, body, expect=201)
        accepted: list[dict[str, Any]] = answer["jobs"]
        return accepted

    # The GPU job goes first in the queue's order and stays queued: the echo job behind it
    # in the same commit waits too, though the miner is free (it serves echo).
    gpu, echo = await batch(("gpu", "high"), ("echo", "normal"))
    assert echo["queue_reason"] != TAKEN_AT_ADMISSION
    assert (await stack.job(client_key, echo["job_id"]))["status"] == "queued"
    for job in (gpu, echo):
        await stack.call("DELETE", f"/v1/jobs/{job['job_id']}", client_key)

    # Ahead of it in that order, the echo job is leased at once.
    echo, gpu = await batch(("echo", "high"), ("gpu", "normal"))
    assert echo["queue_reason"] == TAKEN_AT_ADMISSION
    await stack.wait_status(client_key, echo["job_id"], "completed", within_s=10)
    assert (await stack.job(client_key, gpu["job_id"]))["status"] == "queued"
    await stack.call("DELETE", f"/v1/jobs/{gpu['job_id']}", client_key)

    # A job for a model the miner does not serve holds nothing back, even beside it.
    nobody, echo = await batch(("nobody", "high"), ("echo", "normal"))
    assert echo["queue_reason"] == TAKEN_AT_ADMISSION
    await stack.wait_status(client_key, echo["job_id"], "completed", within_s=10)
    assert (await stack.job(client_key, nobody["job_id"]))["status"] == "queued"


async def test_a_job_cancelled_between_its_lease_and_its_send_never_reaches_the_miner(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The cancel commits after the lease and before the `assign` is written (a window of
    milliseconds, held open here): the miner is not sent a job whose result would be
    refused, and its slot is free for the next job."""
    caplog.set_level(logging.INFO, logger="miner.daemon")
    miner_key, _ = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    await stop_dispatcher()
    sub = await stack.submit(client_key)  # no miner yet: it stays queued
    job_id = sub["job_id"]
    d = await stack.daemon(miner_key)
    conn = conn_of(stack, d.miner_id)
    offer = conn.advert.offer("echo")
    assert offer is not None
    core = Core.of(stack.app)
    identity = MinerIdentity(conn.miner_id, conn.address, conn.public_key)
    claimed = await lifecycle.claim_job(
        core, job_id, identity, offer.price_uait_per_unit, offer.unit
    )
    assert claimed is not None  # leased, as a dispatcher round leases, and not yet sent

    cancelled = await stack.call("DELETE", f"/v1/jobs/{job_id}", client_key)
    assert cancelled["status"] == "cancelled"
    hub = stack.app[HUB]

    async def heard() -> bool:
        return hub.was_cancelled(job_id)

    await until(heard, 5, "the cancel listener to hear of the cancel")
    assert await hub.deliver(core, conn, claimed, offer) is False
    assert job_id not in conn.running

    nxt = await stack.submit(client_key)  # the free slot takes it; it runs after the above
    await stack.wait_status(client_key, nxt["job_id"], "completed", within_s=10)
    assigned = [
        getattr(r, "job_id", None)
        for r in caplog.records
        if r.name == "miner.daemon" and r.getMessage() == "job assigned"
    ]
    assert assigned == [nxt["job_id"]]
    assert (await stack.balance(client_addr))["held"] == 0
