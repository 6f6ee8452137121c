"""Completing a job: the receipt checked against the leased job, then the job row,
receipt, output and ledger settlement written in one commit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chain import store as ledger_store
from chain.ledger import Result
from coordinator.db import schema
from coordinator.domain.jobs import Job, JobStatus
from coordinator.service import throughput
from coordinator.service.core import Core
from coordinator.service.jobstate import (
    Change,
    Outcome,
    clean_text,
    publish_change,
    running_for,
    update_job,
)
from coordinator.service.records import (
    INLINE_RESULT_BYTES,
    dumps,
    load_job,
)
from protocol.canonical import sha256_hex
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


# Built once (each completion runs them; see update_job).
_INSERT_RECEIPT = schema.receipts.insert()
_COUNT_COMPLETED = (
    update(schema.miners)
    .where(schema.miners.c.miner_id == bindparam("m_id"))
    .values(jobs_completed=schema.miners.c.jobs_completed + 1, last_seen_ms=bindparam("m_now"))
)


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
) -> Change:
    """Mark a job completed and settle it, in one commit.

    The hub has verified `signature` over `receipt` (chain.receipts.verify_receipt) before
    calling. Here the receipt is also checked against the job as leased (job, chain, miner,
    payee, input hash, output hash, price recorded at claim, attempt); a mismatch answers
    `REJECTED`. The cost is the receipt's `cost_uait` capped at the escrow; the miner is
    paid it less the fee. A retry of an already settled result answers `EXISTS`.
    """

    async def op(conn: AsyncConnection) -> Change:
        job = await load_job(conn, job_id, lock=True)
        if job is None:
            return Change(Outcome.STALE, None, "no such job")
        if job.status == JobStatus.COMPLETED and job.miner_id == miner_id:
            stored = (
                await conn.execute(
                    select(schema.receipts.c.receipt).where(schema.receipts.c.job_id == job_id)
                )
            ).scalar()
            if stored is not None and orjson.loads(stored) == dict(receipt):
                return Change(Outcome.EXISTS, job)
            return Change(Outcome.STALE, job, "job already completed")
        if not running_for(job, miner_id):
            return Change(Outcome.STALE, job, f"job is {job.status.value}, not leased to you")
        problem = _receipt_mismatch(job, receipt, output)
        if problem is not None:
            return Change(Outcome.REJECTED, job, problem)
        now = now_ms()
        cost = int(receipt["cost_uait"])
        settlement = await ledger_store.post(
            conn, job_id, job.miner_address or "", cost, core.settings.fee_bps, now
        )
        if settlement.result != Result.CREATED:
            raise RuntimeError(f"settlement of {job_id} answered {settlement.result}")
        await conn.execute(
            _INSERT_RECEIPT,
            {
                "job_id": job_id,
                "chain_id": job.chain_id,
                "receipt": dumps(dict(receipt)),
                "signature": dumps(dict(signature)),
                "created_at_ms": now,
            },
        )
        await conn.execute(_COUNT_COMPLETED, {"m_id": miner_id, "m_now": now})
        url = f"/v1/jobs/{job_id}/download"
        done = await update_job(
            conn,
            job_id,
            current=job.status,
            status=JobStatus.COMPLETED.value,
            progress=100,
            cost_uait=settlement.charged_uait,
            completed_at_ms=now,
            lease_expires_at_ms=None,
            result=dumps(_result_value(output, content_type, summary, url)),
            output=output,
            output_sha256=sha256_hex(output),
            output_content_type=clean_text(content_type, 200),
            output_filename=clean_text(filename, 255),
            output_size=len(output),
            updated_at_ms=now,
        )
        return Change(Outcome.OK, done, None, settlement)

    change = publish_change(core, await core.db.write(op))
    if change.outcome == Outcome.OK and change.job is not None:
        throughput.forget(core, change.job.model)
    return change


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
