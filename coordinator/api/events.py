"""Server-sent event streams of jobs: one job (`GET /v1/jobs/{job_id}/events`, SPEC §3)
and all the caller's jobs (`GET /v1/jobs/events`, docs/api.md). Both read the in-process
job bus (`coordinator.bus`); events from other coordinator processes arrive through it
too (PostgreSQL NOTIFY). Registered before `/v1/jobs/{job_id}` (coordinator.app)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from coordinator.api.common import caller
from coordinator.api.jobs import queue_reason, queue_reasons
from coordinator.appkeys import METRICS
from coordinator.bus import JOB_OWNER, JOB_SNAPSHOT, Subscription
from coordinator.domain.jobs import STATUS_VALUES, TERMINAL, Job
from coordinator.errors import RESPONSE_HEADERS, NotFound, ValidationFailed
from coordinator.service import jobs as job_service
from coordinator.service.core import Core
from coordinator.service.keys import ApiKey
from coordinator.service.records import job_view

routes = web.RouteTableDef()

SSE_KEEPALIVE_S = 15.0
SSE_POLL_S = 1.0  # how soon a stream notices that its client has gone


@routes.get("/v1/jobs/{job_id}/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the job now, then each status/progress change until it ends."""
    key = caller(request)
    core = Core.of(request.app)
    job_id = request.match_info["job_id"]
    metrics = request.app[METRICS]
    async with core.bus.subscribe(job_id) as sub:
        job = await job_service.read_job(core, key, job_id)  # after subscribing: no gap
        response = _event_stream(request)
        await response.prepare(request)
        metrics.sse_streams += 1
        try:
            await response.write(_sse("status", job_view(job, queue_reason(request, job))))
            while job.status not in TERMINAL:
                event = await _next_event(request, sub)
                if event is _GONE:
                    break  # the client hung up: stop holding a handler for it
                if event is None:
                    # Quiet: re-read (another process may have changed it) and keep alive.
                    job = await job_service.read_job(core, key, job_id)
                    await response.write(b": keep-alive\n\n")
                    if job.status in TERMINAL:
                        await response.write(_sse("status", job_view(job)))
                    continue
                if event.get("type") == "progress":
                    await response.write(_sse("progress", _public(event)))
                    continue
                if event.get("type") != "status":
                    continue
                snapshot = event.get(JOB_SNAPSHOT)  # as committed, when published here
                if isinstance(snapshot, Job):
                    job = snapshot
                else:
                    job = await job_service.read_job(core, key, job_id)
                await response.write(_sse("status", job_view(job, queue_reason(request, job))))
            await response.write(_sse("end", {"job_id": job_id, "status": job.status.value}))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client stopped listening: a normal way for a stream to end
        finally:
            metrics.sse_streams -= 1
    return response


ALL_EVENTS_QUEUE = 8192  # unread events a stream of all jobs keeps before dropping
EVENTS_PER_WRITE = 256


@routes.get("/v1/jobs/events")
async def all_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of every job of the caller (an admin: of every job), from the
    moment the response headers are sent, until the client hangs up (docs/api.md);
    `?status=completed,failed`: only the status events of jobs entering those statuses."""
    key = caller(request)
    statuses = _status_filter(request)  # before subscribing: a 422 holds nothing open
    core = Core.of(request.app)
    metrics = request.app[METRICS]
    owner = None if key.role == "admin" else key.address
    async with core.bus.subscribe(None, ALL_EVENTS_QUEUE, owner=owner, statuses=statuses) as sub:
        response = _event_stream(request)
        await response.prepare(request)
        metrics.sse_streams += 1
        reported_drops = 0
        try:
            while True:
                event = await _next_event(request, sub)
                if event is _GONE:
                    break
                if event is None:
                    await response.write(b": keep-alive\n\n")
                    continue
                chunks = []
                if sub.dropped > reported_drops:  # the client fell behind: tell it so
                    chunks.append(_sse("dropped", {"events": sub.dropped - reported_drops}))
                    reported_drops = sub.dropped
                # Events that arrived together (a commit's worth) go out in one write.
                batch = (event, *sub.take_ready(EVENTS_PER_WRITE))
                chunks += await _all_events_chunks(request, core, key, batch)
                if chunks:
                    await response.write(b"".join(chunks))
        except ConnectionResetError:
            pass  # the client stopped listening
        finally:
            metrics.sse_streams -= 1
    return response


def _status_filter(request: web.Request) -> frozenset[str] | None:
    """The statuses `?status=` names (comma-separated, or the parameter repeated), or None
    for all events (no names, as `GET /v1/jobs?status=` lists all). Raises
    ValidationFailed for an unknown status or query parameter."""
    errors: list[tuple[str, str]] = []
    unknown = set(request.query) - {"status"}
    errors.extend((name, "unknown query parameter") for name in sorted(unknown))
    values = request.query.getall("status", [])
    named = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if any(name not in STATUS_VALUES for name in named):
        errors.append(("status", f"must be a comma-separated list of: {', '.join(STATUS_VALUES)}"))
    if errors:
        raise ValidationFailed(errors)
    return frozenset(named) if named else None


async def _all_events_chunks(
    request: web.Request, core: Core, key: ApiKey, events: Sequence[dict[str, Any]]
) -> list[bytes]:
    """What the stream of all jobs sends for bus events, in order: nothing for other
    clients' jobs and for cancel notices (they are for miners)."""
    shown: list[tuple[dict[str, Any], Job]] = []
    for event in events:
        if event.get("type") in ("status", "progress"):
            job = await _event_job(core, key, event)
            if job is not None:
                shown.append((event, job))
    statuses = [job for event, job in shown if event["type"] == "status"]
    reasons = iter(queue_reasons(request, statuses))
    return [
        _sse("progress", _public(event))
        if event["type"] == "progress"
        else _sse("status", job_view(job, next(reasons)))
        for event, job in shown
    ]


async def _event_job(core: Core, key: ApiKey, event: dict[str, Any]) -> Job | None:
    """The job an event is about, if `key` may see it: as committed when published by this
    process, else read (events from other processes carry only the job's owner). The bus
    offers a client's stream its own jobs' events only; this check stays for an event
    published without its job (the bus cannot tell whose it is)."""
    job = event.get(JOB_SNAPSHOT)
    owner = event.get(JOB_OWNER)
    if owner is not None and key.role != "admin" and owner != key.address:
        return None  # another client's job: no read needed to know
    try:
        if isinstance(job, Job):
            return job_service.visible(job, key)
        return await job_service.read_job(core, key, event["job_id"])
    except NotFound:
        return None


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


def _public(event: dict[str, Any]) -> dict[str, Any]:
    """A bus event as a stream shows it: without the job object or owner it carries."""
    return {name: value for name, value in event.items() if name not in _INTERNAL}


_INTERNAL = (JOB_SNAPSHOT, JOB_OWNER)


def _event_stream(request: web.Request) -> web.StreamResponse:
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **request.get(RESPONSE_HEADERS, {}),
        }
    )


_GONE: dict[str, Any] = {}


async def _next_event(request: web.Request, sub: Subscription) -> dict[str, Any] | None:
    """The next bus event; None after SSE_KEEPALIVE_S of quiet; _GONE once the client left."""
    waited = 0.0
    while waited < SSE_KEEPALIVE_S:
        event: dict[str, Any] | None = await sub.get(SSE_POLL_S)
        if event is not None:
            return event
        if request.transport is None or request.transport.is_closing():
            return _GONE
        waited += SSE_POLL_S
    return None
