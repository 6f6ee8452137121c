"""Job-state primitives shared by the lifecycle and settlement services: the result
values, the row update, and the unsuccessful endings that void the escrow."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ClauseElement

from chain import store as ledger_store
from chain.ledger import Result, Settlement
from coordinator.db import schema
from coordinator.domain.jobs import Job, JobStatus, can_transition
from coordinator.service.core import Core
from coordinator.service.records import (
    JOB_COLUMNS,
    job_from_row,
)
from protocol.frozen import direct_init
from protocol.timefmt import now_ms

jobs = schema.jobs


@direct_init
@dataclass(frozen=True)
class MinerIdentity:
    miner_id: str
    address: str  # where it is paid: the address its miner API key is bound to
    public_key: str  # hex of the daemon's Ed25519 public key


class Outcome(StrEnum):
    OK = "ok"  # done now
    EXISTS = "exists"  # already done exactly so (a retry): nothing changed
    STALE = "stale"  # the job is not running for this miner any more: nothing changed
    REJECTED = "rejected"  # the result does not fit the job: nothing changed


@direct_init
@dataclass(frozen=True)
class Change:
    outcome: Outcome
    job: Job | None
    detail: str | None = None
    settlement: Settlement | None = None
    previous: JobStatus | None = None  # the status before this change


def status_event(job: Job) -> dict[str, Any]:
    return {
        "type": "status",
        "status": job.status.value,
        "progress": 100 if job.status == JobStatus.COMPLETED else job.progress,
        "attempts": job.attempts,
        "miner_id": job.miner_id,
        "error": job.error,
    }


def publish_change(core: Core, change: Change, event: dict[str, Any] | None = None) -> Change:
    if change.outcome == Outcome.OK and change.job is not None:
        if event is None:
            core.bus.publish(change.job.job_id, status_event(change.job), job=change.job)
        else:
            core.bus.publish(change.job.job_id, event)
    return change


async def update_job(
    conn: AsyncConnection, job_id: str, *, current: JobStatus | None = None, **values: Any
) -> Job:
    """Update one job row; a status change must be an edge of the state machine
    (`current` is the status the caller read under its lock)."""
    if "status" in values:
        target = JobStatus(values["status"])
        assert current is not None and can_transition(current, target), (current, target)
    values.setdefault("updated_at_ms", now_ms())
    if any(isinstance(value, ClauseElement) for value in values.values()):
        statement: Any = (
            update(jobs).where(jobs.c.job_id == job_id).values(**values).returning(*JOB_COLUMNS)
        )
        row = (await conn.execute(statement)).one()
    else:
        statement = update_statement(frozenset(values))
        row = (await conn.execute(statement, update_params(job_id, values))).one()
    return job_from_row(row)


# One statement per set of updated columns, built once: building an UPDATE ... RETURNING of
# forty columns and its cache key cost more than running it (docs/benchmarks.md).
@functools.cache
def update_statement(columns: frozenset[str], *, returning: bool = True) -> Any:
    """UPDATE of one job's `columns`, by `update_params`; with RETURNING of the whole row
    unless `returning` is False (the form executemany takes for a batch of jobs)."""
    statement = (
        update(jobs)
        .where(jobs.c.job_id == bindparam("v_job_id"))
        .values({name: bindparam(f"v_{name}") for name in sorted(columns)})
    )
    return statement.returning(*JOB_COLUMNS) if returning else statement


def update_params(job_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of `update_statement(frozenset(values))` for one job."""
    params = {f"v_{name}": value for name, value in values.items()}
    params["v_job_id"] = job_id
    return params


def row_params(job: Job, columns: tuple[str, ...], **stored: Any) -> dict[str, Any]:
    """`update_params` of `columns` as `job` holds them, or as `stored` gives them (a
    column's form of a field: an enum's value, JSON text; a column no field holds). One
    dict a row and its keys made once: a batch builds one of these a job (round 31)."""
    fields = job.__dict__
    params = {
        key: stored[name] if name in stored else fields[name] for name, key in _param_keys(columns)
    }
    params["v_job_id"] = job.job_id
    return params


@functools.cache
def _param_keys(columns: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name, f"v_{name}") for name in columns)


def clean_text(text: str | None, limit: int) -> str | None:
    """A miner- or client-supplied string fit for a text column: no NUL (PostgreSQL cannot
    store it), at most `limit` characters."""
    return None if text is None else text.replace("\x00", "")[:limit]


def running_for(job: Job | None, miner_id: str) -> bool:
    return job is not None and job.status == JobStatus.RUNNING and job.miner_id == miner_id


async def fail_or_requeue(
    conn: AsyncConnection, core: Core, job: Job, error: str, retryable: bool
) -> Change:
    now = now_ms()
    if retryable and job.attempts < core.settings.max_attempts:
        requeued = await update_job(
            conn,
            job.job_id,
            current=job.status,
            status=JobStatus.QUEUED.value,
            lease_expires_at_ms=None,
            error=error,
            updated_at_ms=now,
        )
        return Change(Outcome.OK, requeued)
    return await end_unsuccessfully(conn, job, JobStatus.FAILED, error, now)


async def end_unsuccessfully(
    conn: AsyncConnection, job: Job, status: JobStatus, error: str | None, now: int
) -> Change:
    """Any unsuccessful end: the whole escrow goes back (void), in the same commit."""
    settlement = await ledger_store.void(conn, job.job_id, now)
    if settlement.result not in (Result.CREATED, Result.EXISTS):
        raise RuntimeError(f"void of {job.job_id} answered {settlement.result}")
    ended = await update_job(
        conn,
        job.job_id,
        current=job.status,
        status=status.value,
        error=error,
        completed_at_ms=now,
        lease_expires_at_ms=None,
        cost_uait=0,
        updated_at_ms=now,
    )
    return Change(Outcome.OK, ended, None, settlement)
