"""Completing a job: the receipt checked against the leased job, then the job row,
receipt, output and ledger settlement written in one commit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chain import store as ledger_store
from chain.ledger import Result
from coordinator.db import schema
from coordinator.domain.jobs import Job, JobStatus, can_transition
from coordinator.service import throughput
from coordinator.service.core import Core
from coordinator.service.jobstate import (
    Change,
    Outcome,
    clean_text,
    publish_change,
    row_params,
    running_for,
    update_statement,
)
from coordinator.service.records import INLINE_RESULT_BYTES, dumps, load_jobs_locked_reusing
from protocol.canonical import sha256_hex
from protocol.frozen import direct_init
from protocol.timefmt import now_ms

jobs = schema.jobs


def _result_value(output: bytes, content_type: str, summary: Mapping[str, Any], url: str) -> Any:
    """Inline when small (JSON decoded, text as a string); otherwise a summary + link."""
    if len(output) <= INLINE_RESULT_BYTES:
        if content_type.startswith("application/json"):
            try:
                return orjson.loads(output)
            except orjson.JSONDecodeError:
                pass
        if content_type.startswith("text/"):
            try:
                return output.decode("utf-8")
            except UnicodeDecodeError:
                pass
    return {
        "inline": False,
        "summary": dict(summary),
        "bytes": len(output),
        "sha256": sha256_hex(output),
        "content_type": content_type,
        "download": url,
    }


# Built once (each completion batch runs them).
_INSERT_RECEIPT = schema.receipts.insert()
_COUNT_COMPLETED = (
    update(schema.miners)
    .where(schema.miners.c.miner_id == bindparam("m_id"))
    .values(
        jobs_completed=schema.miners.c.jobs_completed + bindparam("m_count"),
        last_seen_ms=bindparam("m_now"),
    )
)
_COMPLETED_COLUMNS = (
    "status",
    "progress",
    "cost_uait",
    "completed_at_ms",
    "lease_expires_at_ms",
    "result",
    "output",
    "output_sha256",
    "output_content_type",
    "output_filename",
    "output_size",
    "updated_at_ms",
)
_MARK_COMPLETED = update_statement(frozenset(_COMPLETED_COLUMNS), returning=False)


@direct_init
@dataclass(frozen=True)
class Completion:
    """A verified result to settle: what `complete_job` was given."""

    job_id: str
    miner_id: str
    receipt: Mapping[str, Any]
    signature: Mapping[str, str]
    output: bytes
    content_type: str
    filename: str
    summary: Mapping[str, Any]
    fee_bps: int
    leased: Job | None  # the job as this process leased it to the miner, where it did


async def complete_job(
    core: Core,
    job_id: str,
    miner_id: str,
    *,
    receipt: Mapping[str, Any],
    signature: Mapping[str, str],
    output: bytes,
    content_type: str,
    filename: str,
    summary: Mapping[str, Any],
    leased: Job | None = None,
) -> Change:
    """Mark a job completed and settle it, in one commit.

    The hub has verified `signature` over `receipt` (chain.receipts.verify_receipt) before
    calling. Here the receipt is also checked against the job as leased (job, chain, miner,
    payee, input hash, output hash, price recorded at claim, attempt); a mismatch answers
    `REJECTED`. The cost is the receipt's `cost_uait` capped at the escrow; the miner is
    paid it less the fee. A retry of an already settled result answers `EXISTS`.

    Completions that arrive together are settled by one operation (`complete_many`).
    `leased`, the job as the hub leased it (hub/registry.py), spares that operation the
    job's whole row while the row still holds that lease unchanged
    (`records.load_jobs_locked_reusing`); the row decides either way.
    """
    completion = Completion(
        job_id,
        miner_id,
        receipt,
        signature,
        output,
        content_type,
        filename,
        summary,
        core.settings.fee_bps,
        leased,
    )
    change = publish_change(core, await core.db.write_coalesced(complete_many, completion))
    if change.outcome == Outcome.OK and change.job is not None:
        throughput.forget(core, change.job.model)
    return change


async def complete_many(conn: AsyncConnection, completions: Sequence[Completion]) -> list[Change]:
    """Settle `completions` in the caller's transaction with one statement per table for
    all of them (their jobs, holds and accounts read once and locked in one order). Each
    is judged alone, in order, as if settled one after the other; one per job at most
    completes it. A settlement the ledger refuses raises: the coalescer then settles each
    alone, so only that one fails."""
    leases = {c.job_id: c.leased for c in completions if c.leased is not None}
    found = await load_jobs_locked_reusing(conn, (c.job_id for c in completions), leases)
    settled: dict[str, Mapping[str, Any]] = {}  # receipts accepted earlier in this batch
    changes: list[Change | None] = []
    accepted: list[tuple[int, Completion, Job]] = []
    for completion in completions:
        job = found.get(completion.job_id)
        change = await _refusal(conn, job, completion, settled)
        changes.append(change)
        if change is None:
            assert job is not None
            accepted.append((len(changes) - 1, completion, job))
            settled[job.job_id] = completion.receipt
            found[job.job_id] = job.evolve(status=JobStatus.COMPLETED)
    if not accepted:
        return [c for c in changes if c is not None]
    now = now_ms()
    posts = [
        ledger_store.PostRequest(
            job.job_id, job.miner_address or "", int(c.receipt["cost_uait"]), c.fee_bps
        )
        for _, c, job in accepted
    ]
    settlements = await ledger_store.post_many(conn, posts, now)
    for post, settlement in zip(posts, settlements, strict=True):
        if settlement.result != Result.CREATED:
            raise RuntimeError(f"settlement of {post.job_id} answered {settlement.result}")
    await conn.execute(
        _INSERT_RECEIPT,
        [
            {
                "job_id": job.job_id,
                "chain_id": job.chain_id,
                "receipt": dumps(dict(c.receipt)),
                "signature": dumps(dict(c.signature)),
                "created_at_ms": now,
            }
            for _, c, job in accepted
        ],
    )
    per_miner = Counter(c.miner_id for _, c, _ in accepted)
    await conn.execute(
        _COUNT_COMPLETED,
        [{"m_id": m, "m_count": n, "m_now": now} for m, n in sorted(per_miner.items())],
    )
    rows = []
    for (index, completion, job), settlement in zip(accepted, settlements, strict=True):
        assert can_transition(job.status, JobStatus.COMPLETED), job.status
        done = _completed(job, completion, settlement.charged_uait, now)
        rows.append(_completed_row(done, completion.output))
        changes[index] = Change(Outcome.OK, done, None, settlement)
    await conn.execute(_MARK_COMPLETED, rows)
    return [c for c in changes if c is not None]


async def _refusal(
    conn: AsyncConnection,
    job: Job | None,
    completion: Completion,
    settled: Mapping[str, Mapping[str, Any]],
) -> Change | None:
    """Why this completion changes nothing (a Change that is not OK), or None: settle it."""
    if job is None:
        return Change(Outcome.STALE, None, "no such job")
    if job.status == JobStatus.COMPLETED and job.miner_id == completion.miner_id:
        stored = settled.get(job.job_id)
        if stored is None:
            text = (
                await conn.execute(
                    select(schema.receipts.c.receipt).where(schema.receipts.c.job_id == job.job_id)
                )
            ).scalar()
            stored = None if text is None else orjson.loads(text)
        if stored is not None and dict(stored) == dict(completion.receipt):
            return Change(Outcome.EXISTS, job)
        return Change(Outcome.STALE, job, "job already completed")
    if not running_for(job, completion.miner_id):
        return Change(Outcome.STALE, job, f"job is {job.status.value}, not leased to you")
    problem = _receipt_mismatch(job, completion.receipt, completion.output)
    if problem is not None:
        return Change(Outcome.REJECTED, job, problem)
    return None


def _completed(job: Job, completion: Completion, charged_uait: int, now: int) -> Job:
    """The job as its completion leaves it (what the row update writes)."""
    output = completion.output
    url = f"/v1/jobs/{job.job_id}/download"
    return job.evolve(
        status=JobStatus.COMPLETED,
        progress=100,
        cost_uait=charged_uait,
        completed_at_ms=now,
        lease_expires_at_ms=None,
        result=_result_value(output, completion.content_type, completion.summary, url),
        output_sha256=sha256_hex(output),
        output_content_type=clean_text(completion.content_type, 200),
        output_filename=clean_text(completion.filename, 255),
        output_size=len(output),
        updated_at_ms=now,
    )


def _completed_row(done: Job, output: bytes) -> dict[str, Any]:
    return row_params(
        done, _COMPLETED_COLUMNS, status=done.status.value, result=dumps(done.result), output=output
    )


def _receipt_mismatch(job: Job, receipt: Mapping[str, Any], output: bytes) -> str | None:
    expected = {
        "job_id": job.job_id,
        "chain_id": job.chain_id,
        "miner_id": job.miner_id,
        "miner_address": job.miner_address,
        "client_address": job.client_address,
        "model": job.model,
        "input_sha256": job.input_sha256,
        "output_sha256": sha256_hex(output),
        "attempt": job.attempts,
    }
    price = job.extra.get("price_uait_per_unit")
    if price is not None:
        expected["price_uait_per_unit"] = price
    for name, value in expected.items():
        if receipt.get(name) != value:
            return f"receipt {name} is {receipt.get(name)!r}, expected {value!r}"
    cost = receipt.get("cost_uait")
    units = receipt.get("units")
    if not isinstance(cost, int) or not isinstance(units, int) or cost < 0 or units < 0:
        return "receipt units and cost_uait must be non-negative integers"
    return None
