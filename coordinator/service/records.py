"""Job rows <-> `Job` values, and the JSON views the API answers."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
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
    """The job a row of `JOB_COLUMNS` (in that order: every reader selects them so) holds.

    The columns are taken by position, and their names are `Job`'s fields: naming each
    of 39 columns through the row's mapping and passing them as keywords cost ~12 us a row,
    a job's row is read two or three times on the hot path, and this ~6 (round 19)."""
    fields = dict(zip(_JOB_NAMES, row, strict=True))
    fields["status"] = JobStatus(fields["status"])
    fields["priority"] = Priority.from_rank(fields["priority"])
    fields["requirements"] = _requirements(fields["requirements"])
    fields["params"] = loads(fields["params"], {})
    fields["output_config"] = loads(fields["output_config"], {})
    fields["result"] = loads(fields["result"])
    fields["extra"] = loads(fields["extra"], {})
    return Job.from_fields(fields)


_JOB_NAMES = tuple(column.name for column in JOB_COLUMNS)
if frozenset(_JOB_NAMES) != {field.name for field in dataclasses.fields(Job)}:
    raise ImportError("JOB_COLUMNS and Job's fields differ: job_from_row needs them equal")


@functools.lru_cache(maxsize=1024)
def _requirements(text: str | None) -> Requirements:
    # Jobs share a few requirement sets, and a Requirements value is frozen: one each.
    return Requirements.from_json(loads(text, {}))


# Built once: load_job runs several times per job, and building a 40-column statement
# and its cache key each time cost more than running it (docs/benchmarks.md).
_LOAD_JOB = select(*JOB_COLUMNS).where(schema.jobs.c.job_id == bindparam("job_id"))
_LOAD_JOB_LOCKED = _LOAD_JOB.with_for_update()


async def load_job(conn: AsyncConnection, job_id: str, *, lock: bool = False) -> Job | None:
    query = _LOAD_JOB_LOCKED if lock else _LOAD_JOB
    row = (await conn.execute(query, {"job_id": job_id})).first()
    return None if row is None else job_from_row(row)


@functools.cache
def _load_jobs_locked(count: int, stamps: bool = False) -> Any:
    # Plain bind parameters per count (an expanding IN is re-rendered on every execution);
    # rows locked in id order on PostgreSQL, one order for every batch, whole rows or
    # their STAMP_COLUMNS alike (rows read whole after the stamps are locked already).
    return (
        select(*(STAMP_COLUMNS if stamps else JOB_COLUMNS))
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


# What tells whether a job's row still matches a Job this process wrote: the status, miner
# and attempt (a lease), what a row changes without them (a rename, a progress message),
# and `updated_at_ms`, which every write of a job row sets, for the rest.
STAMP_COLUMNS = [
    schema.jobs.c[name]
    for name in (
        "job_id", "status", "miner_id", "attempts", "updated_at_ms", "name", "progress_message",
    )
]  # fmt: skip


def unchanged(job: Job, stamp: Sequence[Any]) -> bool:
    """Whether a row of STAMP_COLUMNS is `job`'s row as `job` has it."""
    status: str
    miner_id: str | None
    attempts: int
    updated_at_ms: int
    name: str | None
    progress_message: str | None
    _, status, miner_id, attempts, updated_at_ms, name, progress_message = stamp
    return (
        job.status == status
        and job.miner_id == miner_id
        and job.attempts == attempts
        and job.updated_at_ms == updated_at_ms
        and job.name == name
        and job.progress_message == progress_message
    )


def take_unchanged(
    stamps: Iterable[Any], held: Mapping[str, Job]
) -> tuple[dict[str, Job], list[str]]:
    """Of rows of STAMP_COLUMNS: the jobs of `held` their rows still match, by id, and the
    ids of the other rows (to be read whole)."""
    taken: dict[str, Job] = {}
    others: list[str] = []
    for stamp in stamps:
        job = held.get(stamp[0])
        if job is not None and unchanged(job, stamp):
            taken[stamp[0]] = job
        else:
            others.append(stamp[0])
    return taken, others


async def load_jobs_locked_reusing(
    conn: AsyncConnection, job_ids: Iterable[str], leased: Mapping[str, Job]
) -> dict[str, Job]:
    """`load_jobs_locked(conn, job_ids)`, taking a job of `leased` (as this process leased
    it) as it is where its row still holds that lease unchanged: the same status, miner,
    attempt, name and progress message, and not written since (`updated_at_ms`). Those
    rows are read seven columns wide and parsed not at all, where a whole row is forty
    columns and JSON (round 31); the others are read whole."""
    wanted = {job_id for job_id in job_ids if "\x00" not in job_id}
    if not leased:
        return await load_jobs_locked(conn, wanted)
    ids = padded(sorted(wanted))
    if not ids:
        return {}
    params = {f"j{i}": job_id for i, job_id in enumerate(ids)}
    stamps = await conn.execute(_load_jobs_locked(len(ids), stamps=True), params)
    found, others = take_unchanged(stamps, leased)
    if others:
        found.update(await load_jobs_locked(conn, others))
    return found


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
