"""A job's whole life through the lifecycle service the hub calls, seen from the API:
claim, progress, a signed result settled in the same commit, download, receipt, balances;
and stale, replayed or mismatched results that never pay."""

from __future__ import annotations

import hashlib
from typing import Any, TypedDict

import aiohttp
import pytest
from ait_harness import Coordinator, CoordinatorFactory, KeyInfo
from api_helpers import call

from chain.ledger import TREASURY_ADDRESS
from chain.receipts import build_receipt, sign_receipt, verify_receipt
from coordinator.domain.jobs import Job, JobStatus
from coordinator.service import lifecycle
from coordinator.service.core import Core
from coordinator.service.lifecycle import Change
from protocol.keys import (
    generate_private_key,
    miner_id_from_public_key,
    public_key_bytes,
    public_key_hex,
)
from protocol.timefmt import iso_ms, now_ms

PRICE = 1_000  # uAIT per unit


@pytest.fixture
async def setup(
    coordinator_factory: CoordinatorFactory,
) -> tuple[Coordinator, KeyInfo, KeyInfo]:
    coordinator = await coordinator_factory(fee_bps=500, lease_seconds=0.2, max_attempts=2)
    client = await coordinator.create_key("client")
    miner = await coordinator.create_key("miner")
    await coordinator.fund(client.address, 10)
    return coordinator, client, miner


class SignedResult(TypedDict):
    receipt: dict[str, Any]
    signature: dict[str, str]


class Miner:
    def __init__(self, payee: str) -> None:
        self.key = generate_private_key()
        pub = public_key_bytes(self.key)
        self.identity = lifecycle.MinerIdentity(
            miner_id_from_public_key(pub), payee, public_key_hex(self.key)
        )

    def result(self, job: Job, output: bytes, units: int, **changes: object) -> SignedResult:
        receipt = build_receipt(
            job_id=job.job_id,
            chain_id=job.chain_id,
            miner_address=self.identity.address,
            client_address=job.client_address,
            model=job.model,
            input_sha256=job.input_sha256,
            output_sha256=hashlib.sha256(output).hexdigest(),
            units=units,
            unit="token",
            price_uait_per_unit=PRICE,
            attempt=job.attempts,
            started_at=iso_ms(job.started_at_ms) or "",
            completed_at=iso_ms(now_ms()) or "",
            public_key=self.identity.public_key,
        )
        receipt.update(changes)
        return {"receipt": receipt, "signature": sign_receipt(self.key, receipt)}


async def _submit(coordinator: Coordinator, http: aiohttp.ClientSession, client: KeyInfo) -> str:
    status, job, _ = await call(
        http,
        "POST",
        coordinator.url + "/v1/jobs",
        client,
        json={"model": "gpt2", "input": "hello", "max_price": 0.5},
    )
    assert status == 201
    return str(job["job_id"])


async def test_completed_job_is_settled_downloadable_and_verifiable(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    job_id = await _submit(coordinator, http, client)
    miner = Miner(miner_key.address)
    job = await lifecycle.claim_job(core, job_id, miner.identity, PRICE, "token")
    assert job is not None and job.status == JobStatus.RUNNING and job.attempts == 1
    assert await lifecycle.claim_job(core, job_id, miner.identity, PRICE, "token") is None
    assert await lifecycle.record_progress(core, job_id, miner.identity.miner_id, 40, "half")
    _, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job_id}", client)
    assert body["status"] == "running" and body["progress"] == 40
    assert body["miner_id"] == miner.identity.miner_id and "queue_reason" not in body

    output = b'{"text": "hello world"}'
    signed = miner.result(job, output, units=300)  # 0.3 AIT, under the 0.5 escrow
    change = await lifecycle.complete_job(
        core,
        job_id,
        miner.identity.miner_id,
        receipt=signed["receipt"],
        signature=signed["signature"],
        output=output,
        content_type="application/json",
        filename="output.json",
        summary={},
    )
    assert change.outcome == lifecycle.Outcome.OK
    # The same result again: exists, nothing paid twice.
    again = await lifecycle.complete_job(
        core,
        job_id,
        miner.identity.miner_id,
        receipt=signed["receipt"],
        signature=signed["signature"],
        output=output,
        content_type="application/json",
        filename="output.json",
        summary={},
    )
    assert again.outcome == lifecycle.Outcome.EXISTS

    _, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job_id}", client)
    assert body["status"] == "completed" and body["progress"] == 100
    assert body["cost"] == 0.3 and body["result"] == {"text": "hello world"}
    assert await coordinator.balance_uait(client.address) == (9_700_000, 0)
    assert await coordinator.balance_uait(miner.identity.address) == (285_000, 0)
    assert await coordinator.balance_uait(TREASURY_ADDRESS) == (15_000, 0)

    async with http.get(
        f"{coordinator.url}/v1/jobs/{job_id}/download", headers=client.headers
    ) as r:
        assert r.status == 200 and await r.read() == output
        assert r.headers["Content-Type"].startswith("application/json")
        assert 'filename="output.json"' in r.headers["Content-Disposition"]
    status, rec, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job_id}/receipt", client)
    assert status == 200 and verify_receipt(rec["receipt"], rec["signature"]) == []
    assert "block" in rec
    status, _, _ = await call(http, "DELETE", f"{coordinator.url}/v1/jobs/{job_id}", client)
    assert status == 409
    _, hist, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/history", client)
    assert hist["total_cost"] == 0.3
    _, ledger, _ = await call(
        http, "GET", f"{coordinator.url}/v1/wallets/{client.address}/history", client
    )
    kinds = sorted(e["kind"] for e in ledger["entries"])
    assert kinds == ["fee", "hold", "mint", "pay", "refund"]  # all touch the client


async def test_bad_results_never_pay(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    job_id = await _submit(coordinator, http, client)
    miner, intruder = Miner(miner_key.address), Miner(miner_key.address)
    job = await lifecycle.claim_job(core, job_id, miner.identity, PRICE, "token")
    assert job is not None
    output = b"out"

    async def complete(who: Miner, signed: SignedResult, data: bytes = output) -> Change:
        return await lifecycle.complete_job(
            core,
            job_id,
            who.identity.miner_id,
            receipt=signed["receipt"],
            signature=signed["signature"],
            output=data,
            content_type="text/plain",
            filename="o.txt",
            summary={},
        )

    stale = await complete(intruder, intruder.result(job, output, 1))
    assert stale.outcome == lifecycle.Outcome.STALE
    for bad in (
        miner.result(job, output, 1, price_uait_per_unit=PRICE * 10, cost_uait=PRICE * 10),
        miner.result(job, output, 1, input_sha256="0" * 64),
        miner.result(job, output, 1, job_id="job_other"),
    ):
        assert (await complete(miner, bad)).outcome == lifecycle.Outcome.REJECTED
    mismatch = await complete(miner, miner.result(job, output, 1), data=b"changed")
    assert mismatch.outcome == lifecycle.Outcome.REJECTED
    assert await coordinator.balance_uait(miner_key.address) == (0, 0)
    assert await coordinator.balance_uait(client.address) == (9_500_000, 500_000)


async def test_leases_expire_then_fail_after_max_attempts(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    job_id = await _submit(coordinator, http, client)
    miner = Miner(miner_key.address)
    for attempt in (1, 2):
        job = await lifecycle.claim_job(core, job_id, miner.identity, PRICE, "token")
        assert job is not None and job.attempts == attempt
        changes = await lifecycle.expire_leases(core, now=now_ms() + 1_000)
        assert [c.job.job_id for c in changes if c.job] == [job_id]
    _, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job_id}", client)
    assert body["status"] == "failed" and body["attempts"] == 2 and "lease expired" in body["error"]
    assert await coordinator.balance_uait(client.address) == (10_000_000, 0)
    # A late result from the first miner is stale and pays nothing.
    assert job is not None
    late = miner.result(job, b"x", 1)
    change = await lifecycle.complete_job(
        core,
        job_id,
        miner.identity.miner_id,
        receipt=late["receipt"],
        signature=late["signature"],
        output=b"x",
        content_type="text/plain",
        filename="o",
        summary={},
    )
    assert change.outcome == lifecycle.Outcome.STALE
    assert await coordinator.balance_uait(miner_key.address) == (0, 0)


async def test_time_out_and_fail(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    running_id = await _submit(coordinator, http, client)
    miner = Miner(miner_key.address)
    assert await lifecycle.claim_job(core, running_id, miner.identity, PRICE, "token")
    async with core.bus.subscribe(None) as feed:
        changes = await lifecycle.time_out_jobs(core, now=now_ms() + 4_000_000)
        assert [c.job.status for c in changes if c.job] == [JobStatus.TIMED_OUT]
        events = [await feed.get(1) for _ in range(2)]
    cancels = [e for e in events if e is not None and e["type"] == "cancel"]
    assert cancels and cancels[0]["job_id"] == running_id
    assert cancels[0]["miner_id"] == miner.identity.miner_id
    failing = await _submit(coordinator, http, client)
    assert await lifecycle.claim_job(core, failing, miner.identity, PRICE, "token")
    change = await lifecycle.fail_job(
        core, failing, miner.identity.miner_id, "bad\x00 input", retryable=False
    )
    assert change.job is not None and change.job.status == JobStatus.FAILED
    assert change.job.error == "bad input"  # NUL dropped: PostgreSQL text cannot hold it
    assert await coordinator.balance_uait(client.address) == (10_000_000, 0)


async def test_time_estimate_follows_measured_throughput(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession
) -> None:
    coordinator = await coordinator_factory()  # default lease: the job runs for 1 s
    client, miner_key = (
        await coordinator.create_key("client"),
        await coordinator.create_key("miner"),
    )
    await coordinator.fund(client.address, 10)
    core = Core.of(coordinator.app)
    miner = Miner(miner_key.address)
    first = await _submit(coordinator, http, client)
    job = await lifecycle.claim_job(core, first, miner.identity, PRICE, "token")
    assert job is not None

    # 10 tokens in (at least) 1 s of running: about 10 tokens/s measured.
    async def complete() -> None:
        done = await lifecycle.complete_job(
            core,
            first,
            miner.identity.miner_id,
            receipt=signed["receipt"],
            signature=signed["signature"],
            output=b"o",
            content_type="text/plain",
            filename="o.txt",
            summary={},
        )
        assert done.outcome == lifecycle.Outcome.OK

    import asyncio

    await asyncio.sleep(1.0)
    signed = miner.result(job, b"o", units=10)
    await complete()
    status, second, _ = await call(
        http,
        "POST",
        coordinator.url + "/v1/jobs",
        client,
        json={
            "model": "gpt2",
            "input": "x" * 400,
            "max_price": 0.5,
            "params": {"max_new_tokens": 100},
        },
    )
    assert status == 201
    # 100 prompt tokens + 100 new at <= 10 tokens/s: at least 20 s (the default 20 tokens/s
    # would give 12 s).
    assert second["estimated_time_seconds"] >= 20


async def test_the_dispatcher_parses_a_queued_row_once_and_a_requeued_job_afresh(
    setup: tuple[Coordinator, KeyInfo, KeyInfo], http: aiohttp.ClientSession
) -> None:
    coordinator, client, miner_key = setup
    core = Core.of(coordinator.app)
    status, body, _ = await call(
        http, "POST", coordinator.url + "/v1/jobs", client, json={"model": "gpt2", "input": "hi"}
    )
    assert status == 201
    job_id = body["job_id"]
    parsed: lifecycle.QueuedCache = {}
    [first] = await lifecycle.list_queued(core, parsed=parsed)
    [again] = await lifecycle.list_queued(core, parsed=parsed)
    assert again is first and first.job_id == job_id  # the next round reuses the parse
    # A pricier miner claims it (the escrow is topped up), its lease runs out, it queues
    # again: the dispatcher must see the new estimate, not the parse of the first round.
    miner = Miner(miner_key.address)
    claimed = await lifecycle.claim_job(core, job_id, miner.identity, PRICE * 20, "token")
    assert claimed is not None and claimed.estimated_cost_uait > first.estimated_cost_uait
    assert await lifecycle.list_queued(core, parsed=parsed) == []
    await lifecycle.expire_leases(core, now=now_ms() + 1_000)
    [requeued] = await lifecycle.list_queued(core, parsed=parsed)
    assert requeued.job_id == job_id and requeued is not first
    assert requeued.estimated_cost_uait == claimed.estimated_cost_uait
