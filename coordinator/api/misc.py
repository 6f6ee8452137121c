"""`/v1/me`, files, the marketplace views and the operations endpoints."""

from __future__ import annotations

from aiohttp import web

from coordinator.api.common import caller, client_caller, json_response
from coordinator.api.jobs import _read_upload
from coordinator.api.validate import query_int
from coordinator.appkeys import DATABASE, LOOP_LAG, METRICS, MINER_REGISTRY
from coordinator.errors import Unavailable, ValidationFailed
from coordinator.service import block_reads
from coordinator.service import files as file_service
from coordinator.service import jobs as job_service
from coordinator.service.core import Core
from protocol.timefmt import iso_ms

routes = web.RouteTableDef()


@routes.get("/v1/me")
async def me(request: web.Request) -> web.Response:
    key = caller(request)
    return json_response(
        {
            "address": key.address,
            "role": key.role,
            "key_id": key.key_id,
            "name": key.name,
            "created_at": iso_ms(key.created_at_ms),
        }
    )


@routes.post("/v1/files")
async def upload_file(request: web.Request) -> web.Response:
    key = client_caller(request)
    upload = await _read_upload(request)
    row = await file_service.store_file(Core.of(request.app), key.address, upload)
    return json_response(
        {
            "file_id": row["file_id"],
            "bytes": row["bytes"],
            "sha256": row["sha256"],
            "filename": row["filename"],
            "content_type": row["content_type"],
            "created_at": iso_ms(row["created_at_ms"]),
        },
        status=201,
    )


# A page of `GET /v1/miners` holds at most this many; without `limit`, every miner from
# `offset` on (the SPEC's plain list).
MINERS_PAGE_MAX = 10_000


@routes.get("/v1/miners")
async def miners(request: web.Request) -> web.Response:
    caller(request)
    query = request.query
    errors: list[tuple[str, str]] = []
    offset = query_int(query, "offset", 0, 0, 10**9, errors)
    limit = query_int(query, "limit", 0, 1, MINERS_PAGE_MAX, errors) if query.get("limit") else None
    model = query.get("model") or None
    unknown = set(query) - {"limit", "offset", "model"}
    errors.extend((name, "unknown query parameter") for name in sorted(unknown))
    if errors:
        raise ValidationFailed(errors)
    registry = request.app.get(MINER_REGISTRY)
    return json_response({"miners": registry.miners_view(model, offset, limit) if registry else []})


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    caller(request)
    registry = request.app.get(MINER_REGISTRY)
    return json_response({"models": registry.models_view() if registry else []})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    db = request.app[DATABASE]
    if not all(writer.running for writer in db.writers):
        raise Unavailable("the database writer is not running")
    problem = await db.unusable_because()
    if problem is not None:
        raise Unavailable(problem)
    return json_response({"status": "ready", "database": db.dialect})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    core = Core.of(request.app)
    gauges: list[tuple[str, str, str, dict[str, str], float]] = []
    for status, count in (await job_service.count_by_status(core)).items():
        gauges.append(("ait_jobs", "gauge", "Jobs by status.", {"status": status}, count))
    writers = core.db.writers  # summed: on PostgreSQL the claims commit on a second one
    for name, help_text, counter in (
        ("ait_db_commits_total", "Group-commit transactions.", "batches"),
        ("ait_db_writes_total", "Write operations committed.", "operations"),
        (
            "ait_db_commit_reruns_total",
            "Group commits run again, a savepoint per write, after a write raised.",
            "reruns",
        ),
    ):
        total = sum(getattr(writer, counter) for writer in writers)
        gauges.append((name, "counter", help_text, {}, total))
    coalescers = sorted(core.db.coalescers().items())
    for family, help_text, counter in (  # each family's lines together
        (
            "ait_db_coalesced_requests_total",
            "Requests written by coalesced operations.",
            "requests",
        ),
        ("ait_db_coalesced_writes_total", "Coalesced operations committed.", "operations"),
    ):
        for name, coalescer in coalescers:
            value = getattr(coalescer, counter)
            gauges.append((family, "counter", help_text, {"kind": name}, value))
    registry = request.app.get(MINER_REGISTRY)
    if registry is not None:
        gauges.append(
            ("ait_miners_connected", "gauge", "Connected miners.", {}, registry.connected_count())
        )
    gauges.extend(await block_reads.chain_gauges(core.db, core.settings))
    drafted = request.app[METRICS].blocks_drafted
    for where in ("event_loop", "helper"):
        help_text = "Blocks drafted, on the event loop or in the seal helper process."
        gauges.append(
            ("ait_blocks_drafted_total", "counter", help_text, {"where": where}, drafted[where])
        )
    verified = request.app[METRICS].signatures_verified
    for where in ("event_loop", "thread"):
        help_text = "Result signatures checked, on the event loop or in a batch on a thread."
        gauges.append(
            ("ait_result_signatures_total", "counter", help_text, {"where": where}, verified[where])
        )
    commit_help = "Group-commit transactions by seconds taken (first operation to commit)."
    histograms = [("ait_db_commit_seconds", commit_help, writers[0].commit_seconds)]
    lag = request.app.get(LOOP_LAG)
    if lag is not None:
        lag_help = "How late a timer set every 50 ms fired: how long the event loop was held."
        histograms.append(("ait_event_loop_lag_seconds", lag_help, lag.histogram))
    text = request.app[METRICS].render(gauges, histograms)
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    from coordinator.openapi import build_openapi

    return json_response(build_openapi())
