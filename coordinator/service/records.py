"""Job rows <-> `Job` values, and the JSON views the API answers."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chain.store import padded
from coordinator.db import schema
from coordinator.domain.jobs import Job, JobStatus, Priority, Requirements
from protocol.money import uait_to_ait
from protocol.timefmt import iso_ms

INLINE_RESULT_BYTES = 64 * 1024  # larger results are summarised; /download has the bytes

# Every column but the output bytes (read only by /download).
JOB_COLUMNS = [c for c in schema.jobs.c if c.name != "output"]


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(text: str | None, default: Any = None) -> Any:
    return default if text is None else orjson.loads(text)


def job_from_row(row: Any) -> Job:
    m: Mapping[str, Any] = row._mapping
    return Job.build(
        job_id=m["job_id"],
        client_address=m["client_address"],
        key_id=m["key_id"],
        chain_id=m["chain_id"],
        model=m["model"],
        status=JobStatus(m["status"]),
        priority=Priority.from_rank(m["priority"]),
        requirements=Requirements.from_json(loads(m["requirements"], {})),
        params=loads(m["params"], {}),
        output_config=loads(m["output_config"], {}),
        input_json=m["input_json"],
        input_file_id=m["input_file_id"],
        input_sha256=m["input_sha256"],
        input_bytes=m["input_bytes"],
        timeout_seconds=m["timeout_seconds"],
        deadline_ms=m["deadline_ms"],
        max_price_uait=m["max_price_uait"],
        estimated_cost_uait=m["estimated_cost_uait"],
        estimated_units=m["estimated_units"],
        estimated_time_seconds=m["estimated_time_seconds"],
        created_at_ms=m["created_at_ms"],
        updated_at_ms=m["updated_at_ms"],
        name=m["name"],
        cost_uait=m["cost_uait"],
        progress=m["progress"],
        progress_message=m["progress_message"],
        attempts=m["attempts"],
        miner_id=m["miner_id"],
        miner_address=m["miner_address"],
        lease_expires_at_ms=m["lease_expires_at_ms"],
        started_at_ms=m["started_at_ms"],
        completed_at_ms=m["completed_at_ms"],
        error=m["error"],
        result=loads(m["result"]),
        output_sha256=m["output_sha256"],
        output_content_type=m["output_content_type"],
        output_filename=m["output_filename"],
        output_size=m["output_size"],
        extra=loads(m["extra"], {}),
    )


# Built once: load_job runs several times per job, and building a 40-column statement
# and its cache key each time cost more than running it (docs/benchmarks.md).
_LOAD_JOB = select(*JOB_COLUMNS).where(schema.jobs.c.job_id == bindparam("job_id"))
_LOAD_JOB_LOCKED = _LOAD_JOB.with_for_update()


async def load_job(conn: AsyncConnection, job_id: str, *, lock: bool = False) -> Job | None:
    query = _LOAD_JOB_LOCKED if lock else _LOAD_JOB
    row = (await conn.execute(query, {"job_id": job_id})).first()
    return None if row is None else job_from_row(row)


@functools.cache
def _load_jobs_locked(count: int) -> Any:
    # Plain bind parameters per count (an expanding IN is re-rendered on every execution);
    # rows locked in id order on PostgreSQL, one order for every batch.
    return (
        select(*JOB_COLUMNS)
        .where(schema.jobs.c.job_id.in_([bindparam(f"j{i}") for i in range(count)]))
        .order_by(schema.jobs.c.job_id)
        .with_for_update()
    )


async def load_jobs_locked(conn: AsyncConnection, job_ids: Iterable[str]) -> dict[str, Job]:
    """The jobs that exist among `job_ids`, by id, locked FOR UPDATE on PostgreSQL."""
    ids = padded(sorted({job_id for job_id in job_ids if "\x00" not in job_id}))
    if not ids:
        return {}
    params = {f"j{i}": job_id for i, job_id in enumerate(ids)}
    rows = await conn.execute(_load_jobs_locked(len(ids)), params)
    return {job.job_id: job for job in map(job_from_row, rows)}


def _ait(uait: int | None) -> float | None:
    return None if uait is None else uait_to_ait(uait)


# What a list item (job_summary) is made of, in _summary's argument order. Listings and
# histories read only these: building whole `Job` values (JSON columns parsed) for them
# was ~60% of a 10,000-job history's ~250 ms, on the event loop (docs/benchmarks.md,
# round 12).
SUMMARY_COLUMNS = tuple(
    schema.jobs.c[name]
    for name in (
        "job_id", "status", "model", "name", "priority", "progress", "chain_id",
        "created_at_ms", "started_at_ms", "completed_at_ms", "estimated_cost_uait", "cost_uait",
    )
)  # fmt: skip


def job_summary(job: Job) -> dict[str, Any]:
    """A list item: enough to pick a job from a table."""
    return _summary(
        job.job_id, job.status.value, job.model, job.name, job.priority.value, job.progress,
        job.chain_id, job.created_at_ms, job.started_at_ms, job.completed_at_ms,
        job.estimated_cost_uait, job.cost_uait,
    )  # fmt: skip


def summary_from_row(row: Any) -> dict[str, Any]:
    """job_summary of a row of SUMMARY_COLUMNS, without building the `Job`."""
    job_id, status, model, name, priority_rank, *rest = row
    return _summary(job_id, status, model, name, Priority.from_rank(priority_rank).value, *rest)


def _summary(
    job_id: str,
    status: str,
    model: str,
    name: str | None,
    priority: str,
    progress: int,
    chain_id: str,
    created_at_ms: int,
    started_at_ms: int | None,
    completed_at_ms: int | None,
    estimated_cost_uait: int,
    cost_uait: int | None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "model": model,
        "name": name,
        "priority": priority,
        "progress": progress,
        "chain_id": chain_id,
        "created_at": iso_ms(created_at_ms),
        "started_at": iso_ms(started_at_ms),
        "completed_at": iso_ms(completed_at_ms),
        "estimated_cost": _ait(estimated_cost_uait),
        "cost": _ait(cost_uait),
    }


def job_view(job: Job, queue_reason: str | None = None) -> dict[str, Any]:
    """The job object of `GET /v1/jobs/{job_id}` (SPEC §3)."""
    view = {
        **job_summary(job),
        "progress": 100 if job.status == JobStatus.COMPLETED else job.progress,
        "progress_message": job.progress_message,
        "miner_id": job.miner_id,
        "result": job.result,
        "error": job.error,
        "attempts": job.attempts,
        "requirements": job.requirements.to_json(),
        "params": dict(job.params),
        "output_config": dict(job.output_config),
        "timeout_seconds": job.timeout_seconds,
        "deadline": iso_ms(job.deadline_ms),
        "max_price": _ait(job.max_price_uait),
        "estimated_time_seconds": job.estimated_time_seconds,
        "input_sha256": job.input_sha256,
        "input_file_id": job.input_file_id,
        "updated_at": iso_ms(job.updated_at_ms),
    }
    if job.status == JobStatus.QUEUED:
        view["queue_reason"] = queue_reason
    if job.output_sha256 is not None:
        view["output"] = {
            "sha256": job.output_sha256,
            "bytes": job.output_size,
            "content_type": job.output_content_type,
            "filename": job.output_filename,
            "download": f"/v1/jobs/{job.job_id}/download",
        }
    return view
