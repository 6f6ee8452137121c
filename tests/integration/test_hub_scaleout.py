"""Two coordinators on one database, each with its own miners (SPEC §8): jobs submitted on
either are dispatched by both, each claimed once, completed once and paid once; a cancel
on one reaches a miner connected to the other. And a deep queue: the dispatcher reads only
its head first, yet finds runnable jobs behind a head that no free miner can run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_hub_flow import StackFactory, stacks, until


@pytest.fixture
async def stack_factory(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    async with stacks(coordinator_factory, tmp_path) as make:
        yield make


async def test_two_coordinators_share_the_queue_without_double_claims(
    stack_factory: StackFactory,
) -> None:
    one = await stack_factory()
    two = await stack_factory()
    miner_key, miner_addr = await one.key("miner")
    daemons = [
        await one.daemon(miner_key, name="one-a", max_concurrency=2),
        await two.daemon(miner_key, name="two-a", max_concurrency=2),
        await two.daemon(miner_key, name="two-b", max_concurrency=2),
    ]
    client_key, client_addr = await one.client(100)
    before = round((await one.balance(client_addr))["balance"] * 1e6)
    ids = []
    for i in range(16):
        side = one if i % 2 else two
        sub = await side.submit(client_key, input={"n": i}, params={"delay_ms": 100})
        ids.append(sub["job_id"])
    jobs = [await one.wait_status(client_key, j, "completed", within_s=30) for j in ids]
    assert all(j["attempts"] == 1 for j in jobs)

    async def all_acked() -> bool:  # each ack travels after the commit polled for above
        return sum(len(d.completed) for d in daemons) >= len(ids)

    await until(all_acked, 10, "the miners to have their results acknowledged")
    done = [job_id for d in daemons for job_id in d.completed]
    assert sorted(done) == sorted(ids)  # every job completed exactly once
    assert {j["miner_id"] for j in jobs} <= {d.miner_id for d in daemons}
    assert len({j["miner_id"] for j in jobs}) >= 2  # both coordinators dispatched
    total = sum(round(j["cost"] * 1e6) for j in jobs)
    after = round((await one.balance(client_addr))["balance"] * 1e6)
    assert before - after == total
    paid = round((await one.balance(miner_addr))["balance"] * 1e6)
    assert paid == sum(round(j["cost"] * 1e6) - round(j["cost"] * 1e6) // 10 for j in jobs)


async def test_cancel_on_one_coordinator_stops_the_miner_on_the_other(
    stack_factory: StackFactory,
) -> None:
    one = await stack_factory()
    two = await stack_factory()
    miner_key, _ = await two.key("miner")
    d = await two.daemon(miner_key, name="far")
    client_key, client_addr = await one.client(100)
    sub = await one.submit(client_key, params={"delay_ms": 30_000})
    job = await one.wait_status(client_key, sub["job_id"], "running", within_s=10)
    assert job["miner_id"] == d.miner_id

    async def holds() -> bool:
        return sub["job_id"] in d.worker.running

    async def idle() -> bool:
        return not d.worker.running

    await until(holds, 5, "the far miner to run the job")
    cancelled = await one.call("DELETE", f"/v1/jobs/{sub['job_id']}", client_key)
    assert cancelled["status"] == "cancelled"
    await until(idle, 5, "the far miner to stop")
    balance = await one.balance(client_addr)
    assert balance["held"] == 0
    # The miner is free and takes the next job, submitted on the first coordinator.
    nxt = await one.submit(client_key)
    await asyncio.wait_for(one.wait_status(client_key, nxt["job_id"], "completed"), 20)


async def test_runnable_jobs_behind_a_head_no_free_miner_can_run_are_dispatched(
    stack_factory: StackFactory,
) -> None:
    from coordinator.hub.dispatcher import SCAN_SLACK

    stack = await stack_factory()
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    await stack.daemon(miner_key)  # one slot, no GPU
    # More high-priority jobs than the head scan holds, all for a GPU no miner has ...
    head = {"model": "echo", "input": 1, "priority": "high", "requirements": {"gpu_type": "h100"}}
    await stack.call("POST", "/v1/jobs/batch", client_key, {"jobs": [head] * (SCAN_SLACK + 8)}, 201)
    # ... and behind them a job the miner can run: it still runs.
    runnable = await stack.submit(client_key)
    done = await stack.wait_status(client_key, runnable["job_id"], "completed", within_s=15)
    assert done["attempts"] == 1
