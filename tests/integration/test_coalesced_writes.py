"""Requests that arrive together (results, claims, submits) are written by one operation
with one statement per table: each still gets the answer it would get alone, and the money
adds up (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest
from ait_harness import Coordinator, CoordinatorFactory, KeyInfo
from api_helpers import call
from sqlalchemy import select
from test_api_settlement import PRICE, Miner, SignedResult, _submit

from chain.ledger import TREASURY_ADDRESS
from coordinator.db import schema
from coordinator.db.database import Database
from coordinator.domain.jobs import Job, Priority, Requirements
from coordinator.errors import InsufficientFunds
from coordinator.service import jobs as jobs_service
from coordinator.service import lifecycle
from coordinator.service.core import Core
from coordinator.service.keys import authenticate
from coordinator.service.lifecycle import Change, Outcome
from coordinator.service.settle import complete_many


@contextlib.asynccontextmanager
async def writer_busy(db: Database) -> AsyncIterator[None]:
    """The group-commit writer held by an operation until the block ends."""
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(_conn: object) -> None:
        started.set()
        await release.wait()

    busy = asyncio.create_task(db.write(hold))
    await started.wait()
    try:
        yield
    finally:
        release.set()
        await busy


def _complete(
    core: Core, job_id: str, miner: Miner, signed: SignedResult, leased: Job | None = None
) -> Coroutine[Any, Any, Change]:
    """`miner`'s result `signed` (output b"out") for `job_id`, as the hub settles it."""
    return lifecycle.complete_job(
        core,
        job_id,
        miner.identity.miner_id,
        receipt=signed["receipt"],
        signature=signed["signature"],
        output=b"out",
        content_type="text/plain",
        filename="o.txt",
        summary={},
        leased=leased,
    )


@pytest.fixture
async def setup(
    coordinator_factory: CoordinatorFactory,
) -> tuple[Coordinator, KeyInfo, KeyInfo]:
    coordinator = await coordinator_factory(fee_bps=500)
    client = await coordinator.create_key("client")
    miner = await coordinator.create_key("miner")
    await coordinator.fund(client.address, 10)
    return coordinator, client, miner


async def test_results_that_arrive_together_settle_once_each(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    miners = [Miner(miner_key.address), Miner(miner_key.address)]
    for miner in miners:
        await lifecycle.upsert_miner(core, miner.identity, {})
    jobs = []
    for i in range(6):
        job_id = await _submit(coordinator, http, client)  # 0.5 AIT escrow each
        miner = miners[i % 2]
        job = await lifecycle.claim_job(core, job_id, miner.identity, PRICE, "token")
        assert job is not None
        jobs.append((job, miner))

    first = jobs[0][1].result(jobs[0][0], b"out", 100)  # sent twice

    def complete(
        i: int, units: int, who: Miner | None = None, **changes: object
    ) -> Coroutine[Any, Any, Change]:
        job, miner = jobs[i]
        signed = first if i == 0 else miner.result(job, b"out", units, **changes)
        return _complete(core, job.job_id, who or miner, signed)

    coalescer = core.db.coalescer(complete_many)
    before = coalescer.operations
    changes: list[Change] = await asyncio.gather(
        complete(0, 100),  # 0.1 AIT
        complete(1, 200),
        complete(0, 100),  # the same result again, in the same batch: paid once
        complete(2, 100, who=miners[1]),  # job 2 is not leased to miners[1]: stale
        complete(3, 300),
        complete(4, 100, input_sha256="0" * 64),  # does not fit the job: rejected
        complete(5, 400),
    )
    assert coalescer.operations == before + 1  # one operation wrote them all
    assert [c.outcome for c in changes] == [
        Outcome.OK,
        Outcome.OK,
        Outcome.EXISTS,
        Outcome.STALE,
        Outcome.OK,
        Outcome.REJECTED,
        Outcome.OK,
    ]
    done = [c.job for c in changes if c.outcome == Outcome.OK]
    assert [j.cost_uait for j in done if j] == [100_000, 200_000, 300_000, 400_000]

    # What each answer says is what the database holds, and the API shows.
    for change in changes:
        assert change.job is not None
        _, body, _ = await call(
            http, "GET", f"{coordinator.url}/v1/jobs/{change.job.job_id}", client
        )
        if change.outcome == Outcome.OK:
            assert body["status"] == "completed" and body["result"] == "out"
            assert body["cost"] * 1_000_000 == change.job.cost_uait
            assert body["completed_at"] is not None and body["progress"] == 100
    statuses = {j.job_id: j.status.value for j, _ in jobs}
    for job, _ in jobs:
        _, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job.job_id}", client)
        statuses[job.job_id] = body["status"]
    assert sorted(statuses.values()) == ["completed"] * 4 + ["running"] * 2

    # 1.0 AIT charged in all, 5% of it to the treasury; 2 escrows of 0.5 still held.
    assert await coordinator.balance_uait(client.address) == (8_000_000, 1_000_000)
    assert await coordinator.balance_uait(miner_key.address) == (950_000, 0)
    assert await coordinator.balance_uait(TREASURY_ADDRESS) == (50_000, 0)
    async with core.db.read() as conn:
        counts = {
            row.miner_id: row.jobs_completed
            for row in await conn.execute(
                select(schema.miners.c.miner_id, schema.miners.c.jobs_completed)
            )
        }
        receipts = (await conn.execute(select(schema.receipts.c.job_id))).all()
    assert counts == {miners[0].identity.miner_id: 1, miners[1].identity.miner_id: 3}
    assert len(receipts) == 4


async def test_claims_made_together_are_judged_in_order(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    coordinator, client, miner_key = setup  # the client has 10 AIT
    core = Core.of(coordinator.app)
    ids = []
    for _ in range(3):  # no max_price and no miner known: nothing held at submit
        status, job, _ = await call(
            http, "POST", coordinator.url + "/v1/jobs", client, json={"model": "m", "input": "x"}
        )
        assert status == 201
        ids.append(str(job["job_id"]))
    queued = await lifecycle.get_job(core, ids[0])
    assert queued is not None and queued.estimated_cost_uait == 0
    price = 4_000_000 // queued.units_in("token")  # each claim tops its escrow up ~4 AIT
    first, second = Miner(miner_key.address), Miner(miner_key.address)

    coalescer = core.db.coalescer(lifecycle.claim_many)
    before = coalescer.operations
    claimed = await asyncio.gather(
        lifecycle.claim_job(core, ids[0], first.identity, price, "token"),
        lifecycle.claim_job(core, ids[0], second.identity, price, "token"),  # taken
        lifecycle.claim_job(core, ids[1], second.identity, price, "token"),
        lifecycle.claim_job(core, ids[2], first.identity, price, "token"),  # cannot fund
    )
    assert coalescer.operations == before + 1
    a, taken, b, unfunded = claimed
    assert taken is None and unfunded is None
    assert a is not None and a.miner_id == first.identity.miner_id
    assert b is not None and b.miner_id == second.identity.miner_id
    cost = price * queued.units_in("token")
    for job in (a, b):
        assert job.attempts == 1 and job.estimated_cost_uait == cost
        stored = await lifecycle.get_job(core, job.job_id)
        assert stored == job  # the answer is what was written
    left = await lifecycle.get_job(core, ids[2])
    assert left is not None and left.status == "queued" and left.attempts == 0
    assert await coordinator.balance_uait(client.address) == (10_000_000 - 2 * cost, 2 * cost)


async def test_submits_made_together_hold_in_order(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession
) -> None:
    coordinator = await coordinator_factory()
    client = await coordinator.create_key("client")
    await coordinator.fund(client.address, 2.5)
    core = Core.of(coordinator.app)
    key = await authenticate(core.db, client.api_key)
    assert key is not None

    def request(max_price_ait: int) -> jobs_service.JobRequest:
        return jobs_service.JobRequest(
            model="m",
            input="x",
            chain_id=coordinator.settings.default_chain,
            priority=Priority.NORMAL,
            requirements=Requirements(),
            params={},
            output_config={},
            timeout_seconds=60,
            max_price_uait=max_price_ait * 1_000_000,
            name=None,
            fail_if_unmatched=False,
        )

    coalescer = core.db.coalescer(jobs_service.admit_many)
    before = coalescer.operations
    # No miner is known, so each job holds its max_price: two of the three 1-AIT jobs fit
    # in 2.5 AIT, whichever arrive first; the free one fits in any order.
    async with writer_busy(core.db):  # as under load: they wait for the writer together
        submits = [
            asyncio.create_task(jobs_service.submit(core, None, key, request(p)))
            for p in (1, 1, 1, 0)
        ]
        for _ in range(500):
            if coalescer.waiting == len(submits):
                break
            await asyncio.sleep(0.01)
    outcomes = await asyncio.gather(*submits, return_exceptions=True)
    assert coalescer.operations == before + 1
    refused = [o for o in outcomes if isinstance(o, InsufficientFunds)]
    admitted = [o for o in outcomes if isinstance(o, Job)]
    assert len(refused) == 1 and len(admitted) == 3 and isinstance(outcomes[3], Job)
    assert "exceeds the available balance 0.500000 AIT" in refused[0].detail
    _, page, _ = await call(http, "GET", coordinator.url + "/v1/jobs", client)
    assert sorted(j["job_id"] for j in page["jobs"]) == sorted(j.job_id for j in admitted)
    assert await coordinator.balance_uait(client.address) == (500_000, 2_000_000)


async def test_claims_commit_beside_a_write_in_progress(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    """On PostgreSQL a claim does not wait for the write the main writer has open (it has a
    writer of its own, as another process's claim would); SQLite has one write lock, so
    there it commits after that write."""
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    status, job, _ = await call(
        http, "POST", coordinator.url + "/v1/jobs", client, json={"model": "m", "input": "x"}
    )
    assert status == 201
    job_id = str(job["job_id"])
    miner = Miner(miner_key.address)
    commits_before = sum(writer.batches for writer in core.db.writers)
    async with writer_busy(core.db):
        claim = asyncio.create_task(lifecycle.claim_job(core, job_id, miner.identity, 1, "token"))
        if core.db.is_postgres:
            claimed = await asyncio.wait_for(claim, 10)
            assert claimed is not None and claimed.status == "running"
            assert (await lifecycle.get_job(core, job_id)).status == "running"  # type: ignore[union-attr]
        else:
            for _ in range(50):  # every turn the loop has: the writer holds the one lock
                await asyncio.sleep(0)
            assert not claim.done()
    claimed = await claim
    assert claimed is not None and claimed.miner_id == miner.identity.miner_id
    assert len(core.db.writers) == (2 if core.db.is_postgres else 1)
    assert core.db.writers[-1].batches >= 1
    commits_after = sum(writer.batches for writer in core.db.writers)
    assert commits_after >= commits_before + 2  # the held write and the claim
    async with http.get(coordinator.url + "/metrics") as response:
        text = await response.text()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    commits = samples["ait_db_commits_total"]  # both writers' commits, in one histogram
    assert commits_after <= int(commits) <= sum(writer.batches for writer in core.db.writers)
    assert samples['ait_db_commit_seconds_bucket{le="+Inf"}'] == commits


async def test_results_judged_against_the_lease_the_hub_holds_only_while_the_row_still_has_it(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    """The hub passes each result the job as it leased it (`leased`), which spares the
    settlement the whole row while the row still holds that lease unchanged; a lease the
    row no longer holds (cancelled, requeued and leased again, renamed, given progress) is
    judged, and shown, by the row."""
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    miner, other = Miner(miner_key.address), Miner(miner_key.address)
    for m in (miner, other):
        await lifecycle.upsert_miner(core, m.identity, {})
    leases = []
    for _ in range(5):
        job_id = await _submit(coordinator, http, client)  # 0.5 AIT escrow each
        job = await lifecycle.claim_job(core, job_id, miner.identity, PRICE, "token")
        assert job is not None
        leases.append(job)
    untouched, cancelled, released, renamed, progressed = leases
    status, _, _ = await call(
        http, "DELETE", f"{coordinator.url}/v1/jobs/{cancelled.job_id}", client
    )
    assert status == 200
    await lifecycle.release_job(core, released.job_id, miner.identity.miner_id, "test")
    again = await lifecycle.claim_job(core, released.job_id, miner.identity, PRICE, "token")
    assert again is not None and again.attempts == released.attempts + 1
    status, _, _ = await call(
        http,
        "PUT",
        f"{coordinator.url}/v1/jobs/{renamed.job_id}",
        client,
        json={"name": "renamed while it ran"},
    )
    assert status == 200
    await lifecycle.record_progress(core, progressed.job_id, miner.identity.miner_id, 50, "half")

    changes: list[Change] = await asyncio.gather(
        *(_complete(core, job.job_id, miner, miner.result(job, b"out", 100), job) for job in leases)
    )  # 0.1 AIT each
    assert [c.outcome for c in changes] == [
        Outcome.OK,
        Outcome.STALE,  # cancelled: nothing paid for it
        Outcome.REJECTED,  # the receipt names attempt 1; the row is at attempt 2
        Outcome.OK,
        Outcome.OK,
    ]
    assert changes[1].detail == "job is cancelled, not leased to you"
    done = {c.job.job_id: c.job for c in changes if c.outcome == Outcome.OK and c.job}
    assert set(done) == {untouched.job_id, renamed.job_id, progressed.job_id}
    assert done[renamed.job_id].name == "renamed while it ran"
    assert done[progressed.job_id].progress_message == "half"
    for job_id, job in done.items():
        _, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job_id}", client)
        assert body["status"] == "completed" and body["cost"] * 1_000_000 == job.cost_uait
        assert body["name"] == job.name

    # Three jobs at 0.1 AIT, one still held (0.5), one cancelled and refunded in full.
    assert await coordinator.balance_uait(client.address) == (
        10_000_000 - 300_000 - 500_000,
        500_000,
    )
    assert await coordinator.balance_uait(miner_key.address) == (285_000, 0)


async def test_claims_judged_against_the_job_as_admitted_only_while_the_row_still_has_it(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    """The dispatcher passes each claim the job as this process admitted it (`queued`),
    which spares the claim the whole row while the row is unchanged; a job cancelled,
    renamed or requeued since is judged, and leased, as its row has it."""
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    miner = Miner(miner_key.address)
    await lifecycle.upsert_miner(core, miner.identity, {})
    admitted = []
    for _ in range(4):
        job_id = await _submit(coordinator, http, client)
        job = await lifecycle.get_job(core, job_id)
        assert job is not None
        admitted.append(job)
    untouched, cancelled, renamed, requeued = admitted
    status, _, _ = await call(
        http, "DELETE", f"{coordinator.url}/v1/jobs/{cancelled.job_id}", client
    )
    assert status == 200
    status, _, _ = await call(
        http,
        "PUT",
        f"{coordinator.url}/v1/jobs/{renamed.job_id}",
        client,
        json={"name": "renamed in the queue"},
    )
    assert status == 200
    first = await lifecycle.claim_job(core, requeued.job_id, miner.identity, PRICE, "token")
    assert first is not None
    await lifecycle.release_job(core, requeued.job_id, miner.identity.miner_id, "given back")

    claims = await asyncio.gather(
        *(
            lifecycle.claim_job(core, job.job_id, miner.identity, PRICE, "token", queued=job)
            for job in admitted
        )
    )
    leased = {job.job_id: job for job in claims if job is not None}
    assert set(leased) == {untouched.job_id, renamed.job_id, requeued.job_id}
    assert leased[renamed.job_id].name == "renamed in the queue"
    assert leased[requeued.job_id].attempts == 2
    assert leased[requeued.job_id].progress_message is None  # a new lease clears it
    for job in leased.values():
        assert job.status == "running" and job.miner_id == miner.identity.miner_id
        assert await lifecycle.get_job(core, job.job_id) == job  # what was written
