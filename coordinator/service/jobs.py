"""Client use cases on jobs: submit (with escrow hold), read, list, rename, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, bindparam, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from chain import store as ledger_store
from chain.ledger import Result
from coordinator.appkeys import AdmissionDispatchProtocol, MinerRegistryProtocol
from coordinator.db import schema
from coordinator.db.database import Database
from coordinator.domain import pricing
from coordinator.domain.jobs import UNITS_BY_UNIT, Job, JobStatus, Priority, Requirements
from coordinator.errors import Conflict, InsufficientFunds, NotFound, ValidationFailed
from coordinator.service.core import Core
from coordinator.service.jobstate import status_event
from coordinator.service.keys import ApiKey
from coordinator.service.lifecycle import ClaimRequest, Outcome, end_job, lease_at_admission
from coordinator.service.records import (
    JOB_COLUMNS,
    SUMMARY_COLUMNS,
    dumps,
    job_from_row,
    summary_from_row,
)
from coordinator.service.records import load_job as _load_job_row
from coordinator.service.throughput import measured_throughput
from protocol.canonical import sha256_hex
from protocol.frozen import direct_init
from protocol.ids import new_job_id
from protocol.money import format_ait
from protocol.timefmt import now_ms

jobs = schema.jobs
_INSERT_JOB = jobs.insert()  # built once: every submit runs it
_INSERT_FILE = schema.files.insert()


@direct_init
@dataclass(frozen=True)
class JobRequest:
    """A validated submission (the API layer checked shapes and ranges)."""

    model: str
    input: Any  # decoded JSON value; a file_id string when `input_file_id` is set
    chain_id: str
    priority: Priority
    requirements: Requirements
    params: Mapping[str, Any]
    output_config: Mapping[str, Any]
    timeout_seconds: int
    max_price_uait: int | None
    name: str | None
    fail_if_unmatched: bool
    input_file_id: str | None = None


@dataclass(frozen=True)
class FileUpload:
    filename: str | None
    content_type: str
    data: bytes


async def load_job(conn: AsyncConnection, job_id: str, *, lock: bool = False) -> Job | None:
    """The job, or None; an id holding NUL (PostgreSQL text cannot) is no job's id."""
    if "\x00" in job_id:
        return None
    return await _load_job_row(conn, job_id, lock=lock)


def visible(job: Job | None, key: ApiKey) -> Job:
    """The job if this key may see it: its owner's address, or an admin. Else 404 (never
    403: another client's job ids are not confirmed to exist)."""
    if job is None or (key.role != "admin" and job.client_address != key.address):
        raise NotFound("no such job")
    return job


async def read_job(core: Core, key: ApiKey, job_id: str) -> Job:
    async with core.db.read() as conn:
        return visible(await load_job(conn, job_id), key)


async def submit(
    core: Core,
    registry: MinerRegistryProtocol | None,
    key: ApiKey,
    req: JobRequest,
    upload: FileUpload | None = None,
    dispatch: AdmissionDispatchProtocol | None = None,
) -> Job:
    """Accept a job: price it, insert it and hold its estimate in escrow, in one commit
    (with `dispatch`, claimed by a free miner in that commit unless a job it could run
    is queued).
    Answers the job as inserted: queued, or running when a miner claimed it."""
    job, file_row = await _priced_job(core, registry, key, req, upload)
    if req.fail_if_unmatched:
        reason = _never_matches(registry, job)
        if reason is not None:
            detail = f"no miner could run this job: {reason}"
            raise ValidationFailed([("model", reason)], detail=detail)
    claims = _reserve(core, dispatch, [job])
    try:
        answer = await core.db.write_coalesced(
            admit_many, Admission(job, file_row, claims.get(job.job_id))
        )
    except BaseException:
        _release(dispatch, claims)
        raise
    if isinstance(answer, int):
        _release(dispatch, claims)
        raise _insufficient(job.chain_id, job.client_address, job.estimated_cost_uait, answer)
    _announce(core, dispatch, [job], [answer])
    return answer


MAX_BATCH_JOBS = 100


async def submit_batch(
    core: Core,
    registry: MinerRegistryProtocol | None,
    key: ApiKey,
    reqs: Sequence[JobRequest],
    dispatch: AdmissionDispatchProtocol | None = None,
) -> list[Job]:
    """Accept every job or none: all are priced, then inserted with their escrow holds in
    one write; if the holds of one chain exceed the available balance nothing is written
    (402). A job with `fail_if_unmatched` that no miner could run refuses the batch (422).
    With `dispatch`, jobs free miners can take are claimed in that write unless jobs
    those miners could run are queued. Answers the jobs as inserted, in order."""
    priced = [await _priced_job(core, registry, key, req, None) for req in reqs]
    unmatched = [
        (f"jobs.{index}.model", reason)
        for index, (req, (job, _)) in enumerate(zip(reqs, priced, strict=True))
        if req.fail_if_unmatched and (reason := _never_matches(registry, job)) is not None
    ]
    if unmatched:
        raise ValidationFailed(unmatched, detail=f"no miner could run {len(unmatched)} of the jobs")
    claims = _reserve(core, dispatch, [job for job, _ in priced])
    admissions = [Admission(job, None, claims.get(job.job_id)) for job, _ in priced]
    placed: list[Job] = []

    wanted: dict[str, int] = {}  # chain -> the batch's holds on it
    for admission in admissions:
        chain_id = admission.job.chain_id
        wanted[chain_id] = wanted.get(chain_id, 0) + admission.job.estimated_cost_uait

    async def admit_all(conn: AsyncConnection) -> None:
        for chain_id, total in wanted.items():  # checked first: all or nothing
            balance = await ledger_store.balance(conn, chain_id, key.address)
            if total > balance.available_uait:
                raise _insufficient(
                    chain_id,
                    key.address,
                    total,
                    balance.available_uait,
                    what="the batch's estimated cost",
                )
        answers = await admit_many(conn, admissions)
        jobs_placed = [answer for answer in answers if isinstance(answer, Job)]
        if len(jobs_placed) != len(answers):  # the check above rules it out
            raise RuntimeError("a batch hold was refused after its balance check")
        placed[:] = jobs_placed  # the writer may run this again alone: the last run counts

    try:
        await core.db.write(admit_all)
    except BaseException:
        _release(dispatch, claims)
        raise
    _announce(core, dispatch, [job for job, _ in priced], placed)
    return placed


def _reserve(
    core: Core, dispatch: AdmissionDispatchProtocol | None, admitted: Sequence[Job]
) -> dict[str, ClaimRequest]:
    if dispatch is None:
        return {}
    return dispatch.reserve(admitted, int(core.settings.lease_seconds * 1000))


def _release(dispatch: AdmissionDispatchProtocol | None, claims: Mapping[str, Any]) -> None:
    if dispatch is not None and claims:
        dispatch.release(claims)


def _announce(
    core: Core,
    dispatch: AdmissionDispatchProtocol | None,
    accepted: Sequence[Job],
    placed: Sequence[Job],
) -> None:
    """Tell event streams about newly accepted jobs (queued, then running for those a miner
    claimed as they were admitted), hand those claims to the hub to send, and wake the
    dispatcher for the rest."""
    claimed = [job for job in placed if job.status == JobStatus.RUNNING]
    for job in accepted:
        core.bus.publish(job.job_id, {"type": "status", "status": "queued", "progress": 0}, job=job)
    for job in claimed:
        core.bus.publish(job.job_id, status_event(job), job=job)
    if dispatch is not None:
        queued = [job for job in placed if job.status != JobStatus.RUNNING]
        dispatch.release(job.job_id for job in queued)
        dispatch.queued(queued)
        if claimed:
            dispatch.deliver(claimed)
    if len(claimed) < len(placed):
        core.bus.wake()


def _insufficient(
    chain_id: str,
    address: str,
    wanted_uait: int,
    available_uait: int,
    what: str = "the job's estimated cost",
) -> InsufficientFunds:
    return InsufficientFunds(
        f"{what} {format_ait(wanted_uait)} AIT exceeds the available balance "
        f"{format_ait(available_uait)} AIT of {address} on {chain_id}",
        estimated_cost=wanted_uait / 1e6,
        available=available_uait / 1e6,
    )


def _never_matches(registry: MinerRegistryProtocol | None, job: Job) -> str | None:
    return registry.never_matches_reason(job) if registry else "no miner hub is running"


async def _priced_job(
    core: Core,
    registry: MinerRegistryProtocol | None,
    key: ApiKey,
    req: JobRequest,
    upload: FileUpload | None,
) -> tuple[Job, dict[str, Any] | None]:
    """The job `req` asks for, priced from the offers now (not yet written), and the row of
    its uploaded input file, if any."""
    from coordinator.service.files import new_file_row

    now = now_ms()
    job_id = new_job_id(now)
    file_row = new_file_row(key.address, upload, now) if upload is not None else None
    input_file_id = file_row["file_id"] if file_row else req.input_file_id
    if input_file_id is None:
        input_text = orjson.dumps(req.input).decode()
        input_bytes, input_sha = len(input_text.encode()), sha256_hex(input_text.encode())
        priced_input: Any = req.input
    else:
        input_text = None
        if file_row is not None:
            input_bytes, input_sha = file_row["bytes"], file_row["sha256"]
        else:
            async with core.db.read() as conn:
                info = await _file_info(conn, input_file_id, key.address)
            input_bytes, input_sha = info
        priced_input = None
    offers: Sequence[pricing.Offer] = registry.offers(req.model) if registry else ()
    measured = await measured_throughput(core, req.model)
    est = pricing.estimate(
        offers,
        priced_input,
        input_bytes,
        req.params,
        req.max_price_uait,
        measured.units_per_second if measured else None,
        measured.unit if measured else None,
    )
    job = Job(
        job_id=job_id,
        client_address=key.address,
        key_id=key.key_id,
        chain_id=req.chain_id,
        model=req.model,
        status=JobStatus.QUEUED,
        priority=req.priority,
        requirements=req.requirements,
        params=req.params,
        output_config=req.output_config,
        input_json=input_text,
        input_file_id=input_file_id,
        input_sha256=input_sha,
        input_bytes=input_bytes,
        timeout_seconds=req.timeout_seconds,
        deadline_ms=now + req.timeout_seconds * 1000,
        max_price_uait=req.max_price_uait,
        estimated_cost_uait=est.cost_uait,
        estimated_units=est.units,
        estimated_time_seconds=est.time_seconds,
        created_at_ms=now,
        updated_at_ms=now,
        name=req.name,
        extra={
            "estimate_unit": est.unit,
            "estimate_price_uait_per_unit": est.price_uait_per_unit,
            UNITS_BY_UNIT: pricing.units_by_unit(priced_input, input_bytes, req.params),
        },
    )
    return job, file_row


@direct_init
@dataclass(frozen=True)
class Admission:
    """A priced job to insert with its escrow hold (and its uploaded input, if any), and
    the claim of a free miner reserved for it, if any."""

    job: Job
    file_row: dict[str, Any] | None
    claim: ClaimRequest | None = None


# The models of queued jobs, another process's included: a claim made at admission on a
# miner that serves one of them would pass a job queued before it. Read off an index led
# by the status (the queue's or the listings'), QUEUED_MODELS_READ rows at most: a longer
# queue holds every claim back.
QUEUED_MODELS_READ = 512
QUEUED_MODELS = select(jobs.c.model).where(schema.QUEUED_ONLY).limit(QUEUED_MODELS_READ + 1)


async def _queued_models(conn: AsyncConnection) -> set[str] | None:
    """The models of the queued jobs; None when more are queued than are read."""
    models = [row[0] for row in await conn.execute(QUEUED_MODELS)]
    return None if len(models) > QUEUED_MODELS_READ else set(models)


async def admit_many(conn: AsyncConnection, admissions: Sequence[Admission]) -> list[Job | int]:
    """Hold each job's estimate and insert the jobs whose hold was made, with one statement
    per table for all of them (submits that arrive together). Per admission: the job as
    inserted, else the client's available balance, which could not cover the estimate
    (nothing of that job is written).

    A job with a reserved claim is inserted already leased to that miner (running, one
    attempt) when no job of a model that miner serves is queued before it and the miner's
    price needs no escrow top-up: one commit from submit to dispatch instead of two
    (docs/architecture.md, "Dispatch at admission"); otherwise it is inserted queued for
    the dispatcher. A queued job that miner cannot serve holds nothing back."""
    now = now_ms()
    holds = [
        ledger_store.HoldRequest(
            a.job.job_id, a.job.chain_id, a.job.client_address, a.job.estimated_cost_uait
        )
        for a in admissions
    ]
    results = await ledger_store.hold_many(conn, holds, now)
    made = zip(admissions, results, strict=True)
    admitted = [a for a, result in made if result == Result.CREATED]
    if any(a.claim is not None for a in admitted):
        placed = _placed(admitted, await _queued_models(conn), now)
    else:
        placed = {a.job.job_id: a.job for a in admitted}
    answers: list[Job | int] = []
    for admission, result in zip(admissions, results, strict=True):
        job = admission.job
        if result == Result.EXCEEDS_AVAILABLE:
            bal = await ledger_store.balance(conn, job.chain_id, job.client_address)
            answers.append(bal.available_uait)
        elif result == Result.CREATED:
            answers.append(placed[job.job_id])
        else:
            raise RuntimeError(f"hold for {job.job_id} answered {result}")
    files = [a.file_row for a in admitted if a.file_row is not None]
    if files:
        await conn.execute(_INSERT_FILE, files)
    if placed:
        await conn.execute(_INSERT_JOB, [_row_of(job) for job in placed.values()])
    return answers


def _placed(admitted: Sequence[Admission], queued: set[str] | None, now: int) -> dict[str, Job]:
    """Each job as inserted, by id, taken in queue order (priority, then age): leased to
    its reserved miner when that needs no top-up and no job of a model the miner serves is
    queued (`queued`: their models; None: not known, nothing is leased), else queued. A job
    that stays queued here counts as queued for the ones after it, so a job leased here
    never passes one queued beside it (submits coalesced into one commit, planned against
    slots that freed in between) that its miner could have run."""
    placed: dict[str, Job] = {}
    for admission in sorted(admitted, key=lambda a: _queue_order(a.job)):
        job, claim = admission.job, admission.claim
        leased = None
        if claim is not None and queued is not None and queued.isdisjoint(claim.serves):
            leased = lease_at_admission(job, claim, now)
        if leased is None and queued is not None:
            queued.add(job.model)
        placed[job.job_id] = leased or job
    return placed


def _queue_order(job: Job) -> tuple[int, int, str]:
    """The dispatcher's order (`list_queued`): high priority first, then oldest first."""
    return (-job.priority.rank, job.created_at_ms, job.job_id)


async def _file_info(conn: AsyncConnection, file_id: str, owner: str) -> tuple[int, str]:
    f = schema.files
    row = (
        await conn.execute(
            select(f.c.bytes, f.c.sha256).where(f.c.file_id == file_id, f.c.owner_address == owner)
        )
    ).first()
    if row is None:
        raise NotFound(f"no file {file_id}")
    return int(row.bytes), str(row.sha256)


def _row_of(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "client_address": job.client_address,
        "key_id": job.key_id,
        "chain_id": job.chain_id,
        "model": job.model,
        "name": job.name,
        "status": job.status.value,
        "priority": job.priority.rank,
        "requirements": dumps(job.requirements.to_json()),
        "params": dumps(dict(job.params)),
        "output_config": dumps(dict(job.output_config)),
        "input_json": job.input_json,
        "input_file_id": job.input_file_id,
        "input_sha256": job.input_sha256,
        "input_bytes": job.input_bytes,
        "timeout_seconds": job.timeout_seconds,
        "deadline_ms": job.deadline_ms,
        "max_price_uait": job.max_price_uait,
        "estimated_cost_uait": job.estimated_cost_uait,
        "estimated_units": job.estimated_units,
        "estimated_time_seconds": job.estimated_time_seconds,
        "progress": 0,
        "attempts": job.attempts,
        "miner_id": job.miner_id,  # these four are set when a miner claims it at admission
        "miner_address": job.miner_address,
        "lease_expires_at_ms": job.lease_expires_at_ms,
        "started_at_ms": job.started_at_ms,
        "created_at_ms": job.created_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "extra": dumps(dict(job.extra)),
    }


def _owner_filter(key: ApiKey) -> list[Any]:
    return [] if key.role == "admin" else [jobs.c.client_address == key.address]


def list_statements(
    key: ApiKey,
    status: JobStatus | None,
    limit: int,
    offset: int,
    columns: Sequence[Any] = SUMMARY_COLUMNS,
) -> tuple[Select[Any], Select[Any]]:
    """(count, page) of a listing. Each filter has an index that gives the whole ORDER BY
    (schema.py), so a page costs its own rows plus the index entries OFFSET skips."""
    cond = _owner_filter(key)
    if status is not None:
        cond.append(jobs.c.status == status.value)
    count = select(func.count()).select_from(jobs).where(*cond)
    page = (
        select(*columns)
        .where(*cond)
        .order_by(jobs.c.created_at_ms.desc(), jobs.c.job_id.desc())
        .limit(limit)
        .offset(offset)
    )
    return count, page


async def list_jobs(
    core: Core, key: ApiKey, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    """The caller's jobs as list items (job_summary), newest first, and how many match."""
    count, page = list_statements(key, status, limit, offset)
    async with core.db.read_long() as conn:  # a count grows with the history
        total = (await conn.execute(count)).scalar_one()
    async with core.db.read() as conn:
        rows = await conn.execute(page)
        return [summary_from_row(row) for row in rows], int(total)


async def latest_job(core: Core, key: ApiKey) -> Job:
    _, page = list_statements(key, None, 1, 0, JOB_COLUMNS)
    async with core.db.read() as conn:
        row = (await conn.execute(page)).first()
    if row is None:
        raise NotFound("you have no jobs yet")
    return job_from_row(row)


MAX_HISTORY = 10_000
# Rows a history reads and formats before it lets the event loop run again (~5 ms here):
# read in one go, 10,000 jobs held the loop for ~250 ms (docs/benchmarks.md, round 12).
HISTORY_SLICE = 500


async def history(
    core: Core, key: ApiKey, from_ms: int | None, to_ms: int | None
) -> tuple[list[dict[str, Any]], int, int]:
    """Jobs created in [from_ms, to_ms): (list items oldest first, count, total cost in
    uAIT)."""
    return await read_history(core.db, key, from_ms, to_ms)


async def read_history(
    db: Database,
    key: ApiKey,
    from_ms: int | None,
    to_ms: int | None,
    slice_rows: int = HISTORY_SLICE,
) -> tuple[list[dict[str, Any]], int, int]:
    """`history`, read `slice_rows` at a time in (created_at_ms, job_id) order, each slice
    starting after the last one's final job, the event loop served in between. The count
    and cost are read last: jobs are never deleted, so `count` covers every job listed."""
    items: list[dict[str, Any]] = []
    after: tuple[int, str] | None = None
    while len(items) < MAX_HISTORY:
        size = min(slice_rows, MAX_HISTORY - len(items))
        async with db.read() as conn:
            rows = (await conn.execute(history_slice(key, from_ms, to_ms, after, size))).all()
        items += [summary_from_row(row) for row in rows]
        if len(rows) < size:
            break
        after = (rows[-1].created_at_ms, rows[-1].job_id)
        await asyncio.sleep(0)
    async with db.read_long() as conn:
        count, cost = (await conn.execute(history_totals(key, from_ms, to_ms))).one()
    return items, int(count), int(cost)


def _history_filter(key: ApiKey, from_ms: int | None, to_ms: int | None) -> list[Any]:
    cond = _owner_filter(key)
    if from_ms is not None:
        cond.append(jobs.c.created_at_ms >= from_ms)
    if to_ms is not None:
        cond.append(jobs.c.created_at_ms < to_ms)
    return cond


def history_slice(
    key: ApiKey,
    from_ms: int | None,
    to_ms: int | None,
    after: tuple[int, str] | None,
    size: int,
) -> Select[Any]:
    """Up to `size` list-item rows of a history after (created_at_ms, job_id) `after`: a
    range of the listing's indexes, read forwards."""
    cond = _history_filter(key, from_ms, to_ms)
    if after is not None:
        cond.append(tuple_(jobs.c.created_at_ms, jobs.c.job_id) > tuple_(*after))
    return (
        select(*SUMMARY_COLUMNS)
        .where(*cond)
        .order_by(jobs.c.created_at_ms, jobs.c.job_id)
        .limit(size)
    )


def history_totals(key: ApiKey, from_ms: int | None, to_ms: int | None) -> Select[Any]:
    return (
        select(func.count(), func.coalesce(func.sum(jobs.c.cost_uait), 0))
        .select_from(jobs)
        .where(*_history_filter(key, from_ms, to_ms))
    )


async def rename(core: Core, key: ApiKey, job_id: str, name: str | None) -> Job:
    async def op(conn: AsyncConnection) -> Job:
        visible(await load_job(conn, job_id, lock=True), key)
        await conn.execute(
            update(jobs).where(jobs.c.job_id == job_id).values(name=name, updated_at_ms=now_ms())
        )
        job = await load_job(conn, job_id)
        assert job is not None
        return job

    return await core.db.write(op)


async def cancel(core: Core, key: ApiKey, job_id: str) -> Job:
    """Cancel a queued or running job: its whole escrow comes back, the miner is told to
    stop. Work a miner did before the cancel is not paid (docs/api.md)."""
    await read_job(core, key, job_id)
    change = await end_job(core, job_id, JobStatus.CANCELLED, "cancelled by the client")
    if change.outcome != Outcome.OK or change.job is None:
        status = change.job.status.value if change.job else "gone"
        raise Conflict(
            f"job {job_id} already ended ({status}); only queued or running jobs can be cancelled"
        )
    return change.job


# Statement objects made once, so they run through their prepared plans (kept by object:
# coordinator.db.prepared); built per call, SQLAlchemy compiled each (~0.2 ms a read).
_OUTPUT = select(jobs.c.output).where(jobs.c.job_id == bindparam("job_id"))
_RECEIPT = select(schema.receipts).where(schema.receipts.c.job_id == bindparam("job_id"))


async def download(core: Core, key: ApiKey, job_id: str) -> tuple[Job, bytes]:
    async with core.db.read() as conn:
        job = visible(await load_job(conn, job_id), key)
        if job.status != JobStatus.COMPLETED or job.output_sha256 is None:
            raise Conflict(f"job {job_id} is {job.status.value}; its output exists once completed")
        data = (await conn.execute(_OUTPUT, {"job_id": job_id})).scalar_one()
    return job, bytes(data)


async def receipt(core: Core, key: ApiKey, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    async with core.db.read() as conn:
        job = visible(await load_job(conn, job_id), key)
        row = (await conn.execute(_RECEIPT, {"job_id": job_id})).first()
    if row is None:
        raise Conflict(f"job {job_id} is {job.status.value} and has no receipt yet")
    return orjson.loads(row.receipt), orjson.loads(row.signature)


async def count_by_status(core: Core) -> dict[str, int]:
    async with core.db.read_long() as conn:  # reads every job's index entry
        rows = await conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
        counts = {status.value: 0 for status in JobStatus}
        counts.update({row[0]: int(row[1]) for row in rows})
        return counts
