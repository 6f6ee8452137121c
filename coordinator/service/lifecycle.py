"""Job lifecycle for the miner hub: claim, leases, progress, completion, failure, expiry.

The coordinator core owns every write to the jobs table; the hub (dispatcher, websocket
handlers, lease reaper) calls these. Each function is one group-commit operation: the job
row and its ledger rows commit together, and the event is published after the commit.
Functions that act for a miner check that the job is running *for that miner*; a stale
call (lease lost, job cancelled, timed out or given to another miner) answers `STALE` and
changes nothing, so a miner that comes back after a network cut can never complete or be
paid for a job twice.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import Integer, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from chain import store as ledger_store
from chain.ledger import Result
from chain.store import padded
from coordinator.db import schema
from coordinator.db.coalesce import own_writer
from coordinator.db.planner import no_index
from coordinator.domain.jobs import (
    TERMINAL,
    Job,
    JobStatus,
    Priority,
    QueuedJob,
    Requirements,
    can_transition,
    metered_units,
)
from coordinator.service.core import Core
from coordinator.service.jobstate import (
    Change,
    MinerIdentity,
    Outcome,
    clean_text,
    end_unsuccessfully,
    fail_or_requeue,
    publish_change,
    row_params,
    running_for,
    status_event,
    update_job,
    update_statement,
)
from coordinator.service.miners import list_registered_miners, upsert_miner
from coordinator.service.records import (
    JOB_COLUMNS,
    STAMP_COLUMNS,
    dumps,
    job_from_row,
    load_job,
    take_unchanged,
)
from coordinator.service.settle import complete_job
from protocol.frozen import direct_init
from protocol.timefmt import now_ms

jobs = schema.jobs

__all__ = [
    "RUNNING_ON_MINER",
    "Change",
    "ClaimRequest",
    "MinerIdentity",
    "Outcome",
    "available_balances",
    "claim_job",
    "claimable_rows",
    "complete_job",
    "end_job",
    "expire_leases",
    "fail_job",
    "get_job",
    "job_input",
    "lease_at_admission",
    "list_queued",
    "list_registered_miners",
    "record_progress",
    "release_job",
    "renew_lease",
    "running_jobs_of",
    "time_out_jobs",
    "upsert_miner",
]


# -- reads -------------------------------------------------------------------------------------
async def get_job(core: Core, job_id: str) -> Job | None:
    async with core.db.read() as conn:
        return await load_job(conn, job_id)


# (job id, attempts, updated_at_ms) -> the queued row parsed; see list_queued.
QueuedCache = dict[tuple[str, int, int], QueuedJob]
MAX_PARSED_QUEUED = 4 * 500  # a few rounds' worth of full scans


async def list_queued(
    core: Core, limit: int = 500, parsed: QueuedCache | None = None
) -> list[QueuedJob]:
    """Queued jobs in dispatch order: high before normal before low, oldest first.

    With `parsed` (the dispatcher's), rows seen in an earlier round are not parsed again:
    under a backlog each round re-reads the head of the queue to fill a few freed slots,
    and parsing those rows was 5% of the coordinator (docs/benchmarks.md, round 8). A row
    is known by (job id, attempts, updated_at_ms): a claim raises attempts, and every
    update of a job sets updated_at_ms."""
    cache: QueuedCache = {} if parsed is None else parsed
    async with core.db.read() as conn:
        rows = (await conn.execute(QUEUE_HEAD, {"q_limit": limit})).all()
    if len(cache) + len(rows) > MAX_PARSED_QUEUED:
        cache.clear()  # jobs claimed long ago; refilled from this round's rows
    found = []
    for row in rows:
        key = (row[0], row[-2], row[-1])  # job_id, attempts, updated_at_ms
        job = cache.get(key)
        if job is None:
            job = cache[key] = _queued_job(row)
        found.append(job)
    return found


def _queued_job(row: Any) -> QueuedJob:
    """A row of `_QUEUED_COLUMNS`, unpacked by position (Row attribute access costs ~1 us
    a name in SQLAlchemy 2.1; docs/benchmarks.md, round 8)."""
    (job_id, client_address, chain_id, model, priority, requirements, max_price_uait,
     estimated_units, estimated_cost_uait, created_at_ms, extra, _, _) = row  # fmt: skip
    return QueuedJob(
        job_id=job_id,
        client_address=client_address,
        chain_id=chain_id,
        model=model,
        priority=Priority.from_rank(priority),
        requirements=Requirements.from_json(orjson.loads(requirements or "{}")),
        max_price_uait=max_price_uait,
        estimated_units=estimated_units,
        estimated_cost_uait=estimated_cost_uait,
        created_at_ms=created_at_ms,
        units_by_unit=metered_units(orjson.loads(extra or "{}")),
    )


# Per number of job ids (`padded`) and dialect, built once: each claim batch runs one.
@functools.cache
def claimable_rows(count: int, postgresql: bool, *, stamps: bool = False) -> Any:
    """The claim's read: the rows of `count` job ids (binds c0..), those still queued;
    with `stamps`, only their STAMP_COLUMNS (records.unchanged)."""
    # The ids find the rows through the primary key. Without statistics both planners
    # preferred a status index for the status term and walked every queued job to find
    # these few: a claim round cost O(backlog) (docs/benchmarks.md, round 15).
    query = (
        select(*(STAMP_COLUMNS if stamps else JOB_COLUMNS))
        .where(
            jobs.c.job_id.in_([bindparam(f"c{i}", type_=jobs.c.job_id.type) for i in range(count)]),
            no_index(jobs.c.status) == JobStatus.QUEUED.value,
        )
        .order_by(jobs.c.job_id)
    )
    return query.with_for_update(skip_locked=True) if postgresql else query


_CLAIM_COLUMNS = (
    "status",
    "miner_id",
    "miner_address",
    "attempts",
    "lease_expires_at_ms",
    "started_at_ms",
    "progress",
    "progress_message",
    "extra",
    "estimated_cost_uait",
    "estimated_units",
    "updated_at_ms",
)
_MARK_CLAIMED = update_statement(frozenset(_CLAIM_COLUMNS), returning=False)

# Built once: every dispatch round runs it.
# What the dispatcher plans with (QueuedJob); the claim reads the whole row of what it takes.
_QUEUED_COLUMNS = (
    "job_id", "client_address", "chain_id", "model", "priority", "requirements",
    "max_price_uait", "estimated_units", "estimated_cost_uait", "created_at_ms", "extra",
    "attempts", "updated_at_ms",  # last: the parse cache's key (list_queued)
)  # fmt: skip
QUEUE_HEAD = (
    select(*(jobs.c[name] for name in _QUEUED_COLUMNS))
    .where(schema.QUEUED_ONLY)  # ix_jobs_queue's predicate
    .order_by(jobs.c.priority.desc(), jobs.c.created_at_ms, jobs.c.job_id)
    .limit(bindparam("q_limit", type_=Integer))
)


# Read off ix_jobs_running_miner, whose predicate it states.
RUNNING_ON_MINER = select(*JOB_COLUMNS).where(
    schema.RUNNING_ONLY, jobs.c.miner_id == bindparam("r_miner")
)


async def running_jobs_of(core: Core, miner_id: str) -> list[Job]:
    """Jobs leased to a miner (for resuming after a reconnect)."""
    async with core.db.read() as conn:
        rows = await conn.execute(RUNNING_ON_MINER, {"r_miner": miner_id})
        return [job_from_row(row) for row in rows]


async def available_balances(
    core: Core, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """Clients' available balances by (chain_id, address), for planning claims that need
    an escrow top-up."""
    async with core.db.read() as conn:
        return await ledger_store.available_balances(conn, keys)


async def job_input(core: Core, job: Job) -> Any:
    """What the runtime gets: the decoded JSON input, or the uploaded file's bytes."""
    if job.input_file_id is None:
        return orjson.loads(job.input_json or "null")
    async with core.db.read() as conn:
        data = (
            await conn.execute(
                select(schema.files.c.data).where(schema.files.c.file_id == job.input_file_id)
            )
        ).scalar_one()
    return bytes(data)


# -- claims and leases -------------------------------------------------------------------------
@direct_init
@dataclass(frozen=True)
class ClaimRequest:
    job_id: str
    miner: MinerIdentity
    price_uait_per_unit: int
    unit: str
    lease_ms: int
    # The models the miner serves. At admission, a queued job of any of them keeps this
    # claim from being made (that job goes to the miner first; service.jobs.admit_many).
    serves: frozenset[str] = frozenset()
    queued: Job | None = None  # the job as this process admitted it, where it did


async def claim_job(
    core: Core,
    job_id: str,
    miner: MinerIdentity,
    price_uait_per_unit: int,
    unit: str,
    queued: Job | None = None,
) -> Job | None:
    """Atomically lease a queued job to `miner` (queued -> running, attempts + 1, lease of
    `lease_seconds`). None when the job is no longer queued (claimed elsewhere, cancelled,
    past its deadline) or when the client cannot fund this miner's price. The price is
    recorded: completion is paid at most at it.

    When the job's estimated cost at this price (price x its estimated units in `unit`,
    never above `max_price`) exceeds its escrow, the escrow is topped up to that cost
    (transfer `hold:{job_id}:{attempt}`) in the same commit and `estimated_cost` follows;
    without enough available balance nothing changes and the job stays queued
    (docs/pricing.md). The dispatcher plans with the client's balance, so that case is
    only a race between two claims of one client.

    Claims made together (a dispatch round's) are written by one operation (`claim_many`).
    `queued`, the job as this process admitted it (the hub keeps those), spares that
    operation the job's whole row while the row is unchanged (`records.unchanged`); the
    row decides either way.
    """
    lease_ms = int(core.settings.lease_seconds * 1000)
    request = ClaimRequest(job_id, miner, price_uait_per_unit, unit, lease_ms, queued=queued)
    job = await core.db.write_coalesced(claim_many, request)
    if job is not None:
        core.bus.publish(job.job_id, status_event(job), job=job)
    return job


@own_writer  # safe beside other writes: it must be beside other processes' claims
async def claim_many(conn: AsyncConnection, requests: Sequence[ClaimRequest]) -> list[Job | None]:
    """Claims in the caller's transaction, judged in order as if made one after the other
    (a job goes to the first request for it), with one read and one write of the jobs
    table for all of them. On PostgreSQL rows another process holds are skipped: that
    claim is lost, not waited for."""
    ids = padded(sorted({r.job_id for r in requests if "\x00" not in r.job_id}))
    known = {r.job_id: r.queued for r in requests if r.queued is not None}
    queued = await _claimable(conn, ids, known) if ids else {}
    now = now_ms()
    claimed: list[Job | None] = []
    for request in requests:
        job = queued.get(request.job_id)
        lease = None if job is None else await _lease(conn, job, request, now)
        if lease is not None:
            del queued[request.job_id]  # a later request for it finds it taken
        claimed.append(lease)
    updates = [_claim_row(job) for job in claimed if job is not None]
    if updates:
        await conn.execute(_MARK_CLAIMED, updates)
    return claimed


async def _claimable(
    conn: AsyncConnection, ids: list[str], known: Mapping[str, Job]
) -> dict[str, Job]:
    """The jobs among `ids` (padded, sorted) still queued, locked (on PostgreSQL, a row
    another process holds is skipped); one of `known` is taken as it is where its row is
    unchanged, read seven columns wide (round 31), the others are read whole."""
    postgresql = conn.dialect.name == "postgresql"
    params = {f"c{i}": job_id for i, job_id in enumerate(ids)}
    if not known:
        rows = await conn.execute(claimable_rows(len(ids), postgresql), params)
        return {job.job_id: job for job in map(job_from_row, rows)}
    stamps = await conn.execute(claimable_rows(len(ids), postgresql, stamps=True), params)
    found, others = take_unchanged(stamps, known)
    if others:  # locked by this transaction now: not skipped
        rest = padded(others)
        params = {f"c{i}": job_id for i, job_id in enumerate(rest)}
        rows = await conn.execute(claimable_rows(len(rest), postgresql), params)
        found.update((job.job_id, job) for job in map(job_from_row, rows))
    return found


async def _lease(conn: AsyncConnection, job: Job, request: ClaimRequest, now: int) -> Job | None:
    """The job as this claim leaves it (escrow topped up if this miner costs more than is
    held), or None: past its deadline, or the client cannot fund this miner."""
    if job.deadline_ms <= now:
        return None
    cost, units = _claim_cost(job, request)
    if cost <= job.estimated_cost_uait:
        return _leased(job, request, now)
    top_up = cost - job.estimated_cost_uait
    result = await ledger_store.top_up(conn, job.job_id, job.attempts + 1, top_up, now)
    if result == Result.EXCEEDS_AVAILABLE:
        return None
    if not result.ok:
        raise RuntimeError(f"escrow top-up for {job.job_id} answered {result}")
    return _leased(job, request, now, topped_up=(cost, units))


def lease_at_admission(job: Job, request: ClaimRequest, now: int) -> Job | None:
    """The job just admitted as `request` claims it in the same commit, or None when the
    claim would need an escrow top-up (the dispatcher claims it then, with the client's
    balance in view) or the job is already past its deadline."""
    if job.deadline_ms <= now or _claim_cost(job, request)[0] > job.estimated_cost_uait:
        return None
    return _leased(job, request, now)


def _claim_cost(job: Job, request: ClaimRequest) -> tuple[int, int]:
    """What the job would cost at this miner's price (capped by max_price), and its units."""
    units = job.units_in(request.unit)
    cost = request.price_uait_per_unit * units
    if job.max_price_uait is not None:
        cost = min(cost, job.max_price_uait)
    return cost, units


def _leased(
    job: Job, request: ClaimRequest, now: int, topped_up: tuple[int, int] | None = None
) -> Job:
    """The job leased to the request's miner: running, one attempt more, its price noted;
    with `topped_up` (cost, units), the estimate its escrow was topped up to at that price."""
    price, unit = request.price_uait_per_unit, request.unit
    extra = {**job.extra, "price_uait_per_unit": price, "unit": unit}
    estimated_cost, estimated_units = job.estimated_cost_uait, job.estimated_units
    if topped_up is not None:
        estimated_cost, estimated_units = topped_up
        extra.update(estimate_unit=unit, estimate_price_uait_per_unit=price)
    assert can_transition(job.status, JobStatus.RUNNING), job.status
    return job.evolve(
        status=JobStatus.RUNNING,
        miner_id=request.miner.miner_id,
        miner_address=request.miner.address,
        attempts=job.attempts + 1,
        lease_expires_at_ms=now + request.lease_ms,
        started_at_ms=job.started_at_ms or now,
        progress=0,
        progress_message=None,
        extra=extra,
        updated_at_ms=now,
        estimated_cost_uait=estimated_cost,
        estimated_units=estimated_units,
    )


def _claim_row(job: Job) -> dict[str, Any]:
    return row_params(job, _CLAIM_COLUMNS, status=job.status.value, extra=dumps(job.extra))


async def renew_lease(core: Core, job_id: str, miner_id: str) -> Job | None:
    """Extend a running job's lease (heartbeat). None when it is not leased to `miner_id`."""

    async def op(conn: AsyncConnection) -> Job | None:
        job = await load_job(conn, job_id, lock=True)
        if not running_for(job, miner_id):
            return None
        now = now_ms()
        lease = now + int(core.settings.lease_seconds * 1000)
        return await update_job(conn, job_id, lease_expires_at_ms=lease, updated_at_ms=now)

    return await core.db.write(op)


async def record_progress(
    core: Core, job_id: str, miner_id: str, progress: int, message: str | None = None
) -> Job | None:
    """Store progress 0-99 (100 only by completion) and renew the lease; publish it."""
    progress = max(0, min(99, int(progress)))
    message = clean_text(message, 500) if message else None

    async def op(conn: AsyncConnection) -> Job | None:
        job = await load_job(conn, job_id, lock=True)
        if job is None or not running_for(job, miner_id):
            return None
        now = now_ms()
        return await update_job(
            conn,
            job_id,
            progress=max(progress, job.progress),
            progress_message=message,
            lease_expires_at_ms=now + int(core.settings.lease_seconds * 1000),
            updated_at_ms=now,
        )

    job = await core.db.write(op)
    if job is not None:
        event = {"type": "progress", "progress": job.progress, "message": message}
        core.bus.publish(job_id, event, job=job)
    return job


async def release_job(core: Core, job_id: str, miner_id: str, reason: str) -> Change:
    """A miner gives a lease back (shutting down, resumed elsewhere): running -> queued."""

    async def op(conn: AsyncConnection) -> Change:
        job = await load_job(conn, job_id, lock=True)
        if not running_for(job, miner_id):
            return Change(Outcome.STALE, job)
        job = await update_job(
            conn,
            job_id,
            current=JobStatus.RUNNING,
            status=JobStatus.QUEUED.value,
            lease_expires_at_ms=None,
            progress_message=clean_text(reason, 500),
        )
        return Change(Outcome.OK, job)

    change = publish_change(core, await core.db.write(op))
    if change.outcome == Outcome.OK:
        core.bus.wake()
    return change


# -- endings -----------------------------------------------------------------------------------
async def fail_job(
    core: Core, job_id: str, miner_id: str, error: str, *, retryable: bool = True
) -> Change:
    """An attempt failed on the miner. Requeue while attempts < max_attempts and the error
    is retryable; otherwise the job fails and its escrow is returned."""

    async def op(conn: AsyncConnection) -> Change:
        job = await load_job(conn, job_id, lock=True)
        if job is None or not running_for(job, miner_id):
            return Change(Outcome.STALE, job)
        return await fail_or_requeue(conn, core, job, clean_text(error, 2000) or "", retryable)

    change = publish_change(core, await core.db.write(op))
    if change.job is not None and change.job.status == JobStatus.QUEUED:
        core.bus.wake()
    return change


async def end_job(core: Core, job_id: str, status: JobStatus, error: str | None) -> Change:
    """End a job that has not completed (cancel, time-out, unrecoverable) and return its
    escrow. `STALE` when it already ended."""
    assert status in TERMINAL and status != JobStatus.COMPLETED

    async def op(conn: AsyncConnection) -> Change:
        job = await load_job(conn, job_id, lock=True)
        if job is None or job.ended:
            return Change(Outcome.STALE, job)
        change = await end_unsuccessfully(conn, job, status, clean_text(error, 2000), now_ms())
        return replace(change, previous=job.status)

    change = publish_change(core, await core.db.write(op))
    was_running = change.previous == JobStatus.RUNNING
    if change.outcome == Outcome.OK and change.job is not None and was_running:
        core.bus.publish(
            job_id, {"type": "cancel", "miner_id": change.job.miner_id, "reason": status.value}
        )
    return change


# -- sweeps (the hub's reaper calls these periodically) ----------------------------------------
# Built once; each implies its partial index's predicate (coordinator.db.schema).
EXPIRED_LEASES = (
    select(jobs.c.job_id, jobs.c.miner_id)
    # The status is checked, not searched by (an index of running jobs would serve it).
    .where(jobs.c.lease_expires_at_ms < bindparam("e_now"), no_index(jobs.c.status) == "running")
    .limit(bindparam("e_limit", type_=Integer))
)
PAST_DEADLINE = (
    select(jobs.c.job_id)
    .where(schema.NOT_ENDED, jobs.c.deadline_ms <= bindparam("d_now"))
    .limit(bindparam("d_limit", type_=Integer))
)


async def expire_leases(core: Core, now: int | None = None, limit: int = 200) -> list[Change]:
    """Running jobs whose lease ran out go back to the queue, or fail after max_attempts."""
    now = now_ms() if now is None else now
    async with core.db.read() as conn:
        rows = await conn.execute(EXPIRED_LEASES, {"e_now": now, "e_limit": limit})
        expired = [(job_id, miner_id) for job_id, miner_id in rows]
    changes = []
    for job_id, miner_id in expired:

        async def op(
            conn: AsyncConnection, job_id: str = job_id, miner_id: str = miner_id
        ) -> Change:
            job = await load_job(conn, job_id, lock=True)
            if (
                job is None
                or not running_for(job, miner_id)
                or (job.lease_expires_at_ms or 0) >= now
            ):
                return Change(Outcome.STALE, job)
            reason = f"lease expired: miner {miner_id} stopped renewing it"
            if job.attempts >= core.settings.max_attempts:
                reason = f"{reason} (attempt {job.attempts} of {core.settings.max_attempts})"
            return await fail_or_requeue(conn, core, job, reason, True)

        changes.append(publish_change(core, await core.db.write(op)))
    if any(c.job is not None and c.job.status == JobStatus.QUEUED for c in changes):
        core.bus.wake()
    return [c for c in changes if c.outcome == Outcome.OK]


async def time_out_jobs(core: Core, now: int | None = None, limit: int = 200) -> list[Change]:
    """Jobs past their deadline end `timed_out`, escrow back; a cancel event tells the hub
    to stop the miner that ran it."""
    now = now_ms() if now is None else now
    async with core.db.read() as conn:
        due = list((await conn.execute(PAST_DEADLINE, {"d_now": now, "d_limit": limit})).scalars())
    changes = []
    for job_id in due:
        change = await end_job(
            core, job_id, JobStatus.TIMED_OUT, "timed out: timeout_seconds passed"
        )
        if change.outcome == Outcome.OK:
            changes.append(change)
    return changes
