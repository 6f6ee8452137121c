"""`/v1/jobs...` handlers (event streams: coordinator.api.events). Plain paths
(`/v1/jobs/latest`, `/history`, `/batch`) are registered before `/v1/jobs/{job_id}` so they
are never taken for a job id."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from coordinator.api.common import (
    caller,
    client_caller,
    json_response,
    parse_json_object,
    read_json_object,
    read_multipart,
)
from coordinator.api.validate import Fields, query_date_ms, query_int
from coordinator.appkeys import ADMISSION_DISPATCH, METRICS, MINER_REGISTRY
from coordinator.domain.jobs import STATUS_VALUES, Job, JobStatus, Priority, Requirements
from coordinator.errors import BadRequest, ValidationFailed
from coordinator.service import jobs as job_service
from coordinator.service.core import Core
from coordinator.service.records import job_view
from coordinator.service.wallets import chain_or_422
from protocol.money import uait_to_ait
from protocol.timefmt import iso_ms

routes = web.RouteTableDef()

MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_PRICE_UAIT = 10**15  # 1e9 AIT
FILE_ID_RE = re.compile(r"file_[0-9a-f]{20}")
MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
SUBMIT_FIELDS = (
    "model",
    "input",
    "output_config",
    "requirements",
    "priority",
    "timeout_seconds",
    "chain_id",
    "max_price",
    "name",
    "params",
    "fail_if_unmatched",
)
REQUIREMENT_FIELDS = ("gpu_type", "gpu_count", "min_vram_gb")
Upload = job_service.FileUpload


def _registry(request: web.Request) -> Any:
    return request.app.get(MINER_REGISTRY)


def queue_reason(request: web.Request, job: Job) -> str | None:
    [reason] = queue_reasons(request, [job])
    return reason


def queue_reasons(request: web.Request, jobs: Sequence[Job]) -> list[str | None]:
    """Why each queued job waits (None for the others); alike jobs share one answer."""
    registry = _registry(request)
    if registry is None:
        reasons: list[str | None] = [None] * len(jobs)
        fallback = "no miner hub is running on this coordinator"
    else:
        reasons = registry.queue_reasons(jobs)
        fallback = "waiting for the dispatcher to assign it"
    return [
        reason or (fallback if j.status == JobStatus.QUEUED else None)
        for j, reason in zip(jobs, reasons, strict=True)
    ]


def parse_job_request(core: Core, data: dict[str, Any], has_file: bool) -> job_service.JobRequest:
    f = Fields(data, SUBMIT_FIELDS)
    model = f.string("model", required=True, nullable=False, min_len=1, pattern=MODEL_RE)
    if "input" not in data and not has_file:
        f.error("input", "is required (or send a multipart 'file' part)")
    elif "input" in data and has_file:
        f.error("input", "give either input or a multipart 'file' part, not both")
    raw_input = data.get("input")
    input_file_id = None
    if isinstance(raw_input, str) and FILE_ID_RE.fullmatch(raw_input):
        input_file_id = raw_input
    output_config = f.mapping("output_config")
    out = Fields(output_config, ("destination", "format"), "output_config.")
    out.string("destination", max_len=100)
    out.string("format", max_len=50)
    f.errors.extend(out.errors)
    req_fields = Fields(
        f.mapping("requirements"), ("gpu_type", "gpu_count", "min_vram_gb"), "requirements."
    )
    gpu_type = req_fields.string("gpu_type", max_len=50)
    gpu_count = req_fields.integer("gpu_count", low=1, high=64, default=1)
    min_vram = req_fields.number("min_vram_gb", low=0, high=4096)
    f.errors.extend(req_fields.errors)
    priority = f.choice("priority", [p.value for p in Priority], "normal")
    timeout_s = f.integer("timeout_seconds", low=1, high=MAX_TIMEOUT_S, default=3600)
    chain_id = f.string("chain_id", max_len=64)
    if chain_id is not None or data.get("chain_id") is None:  # absent or null: the default
        try:
            chain_id = chain_or_422(core, chain_id)
        except ValidationFailed as exc:
            f.errors.extend((e["field"], e["detail"]) for e in exc.extra["errors"])
    max_price = f.amount_uait("max_price", high_uait=MAX_PRICE_UAIT)
    name = f.string("name", max_len=200)
    params = f.mapping("params")
    fail_if_unmatched = f.boolean("fail_if_unmatched")
    f.check()
    assert model is not None and chain_id is not None
    return job_service.JobRequest(
        model=model,
        input=raw_input,
        chain_id=chain_id,
        priority=Priority(priority),
        requirements=Requirements(
            gpu_type=gpu_type.strip().lower() if gpu_type else None,
            gpu_count=gpu_count or 1,
            min_vram_gb=min_vram,
        ),
        params=params,
        output_config=output_config,
        timeout_seconds=timeout_s or 3600,
        max_price_uait=max_price,
        name=name,
        fail_if_unmatched=fail_if_unmatched,
        input_file_id=input_file_id,
    )


async def _read_submission(request: web.Request) -> tuple[dict[str, Any], Upload | None]:
    parts = await read_multipart(request, ("data", "file"))
    if "data" not in parts:
        raise BadRequest("the multipart body needs a 'data' part holding the job JSON")
    data = parse_json_object(parts["data"].data)
    file = parts.get("file")
    upload = Upload(file.filename, file.content_type, file.data) if file else None
    return data, upload


async def _read_upload(request: web.Request) -> Upload:
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("upload a file as multipart/form-data with a 'file' part")
    parts = await read_multipart(request, ("file",))
    if "file" not in parts:
        raise ValidationFailed([("file", "the multipart body needs a 'file' part")])
    file = parts["file"]
    return Upload(file.filename, file.content_type, file.data)


@routes.post("/v1/jobs")
async def submit(request: web.Request) -> web.Response:
    key = client_caller(request)
    core = Core.of(request.app)
    if request.content_type.startswith("multipart/"):
        data, upload = await _read_submission(request)
    else:
        data, upload = await read_json_object(request), None
    req = parse_job_request(core, data, upload is not None)
    job = await job_service.submit(
        core, _registry(request), key, req, upload, request.app.get(ADMISSION_DISPATCH)
    )
    request.app[METRICS].jobs_submitted[job.chain_id] += 1
    return json_response(_accepted(request, job, queue_reason(request, job)), status=201)


# A job a free miner took in the commit that admitted it (docs/api.md, "Submit").
TAKEN_AT_ADMISSION = "a miner with a free slot took it as it was accepted"


def _accepted(request: web.Request, job: Job, reason: str | None) -> dict[str, Any]:
    """The answer to a submit: the job as accepted (queued, with its estimate). One that a
    free miner took in the same commit is running by now; its reason says so."""
    if job.status == JobStatus.RUNNING:
        reason = TAKEN_AT_ADMISSION
    return {
        "job_id": job.job_id,
        "status": JobStatus.QUEUED.value,
        "estimated_cost": uait_to_ait(job.estimated_cost_uait),
        "estimated_time_seconds": job.estimated_time_seconds,
        "chain_id": job.chain_id,
        "created_at": iso_ms(job.created_at_ms),
        "input_sha256": job.input_sha256,
        "queue_reason": reason,
    }


@routes.post("/v1/jobs/batch")
async def submit_batch(request: web.Request) -> web.Response:
    """Several jobs in one request, accepted all or none (docs/api.md, "Batches")."""
    key = client_caller(request)
    core = Core.of(request.app)
    reqs = parse_batch(core, await read_json_object(request))
    jobs = await job_service.submit_batch(
        core, _registry(request), key, reqs, request.app.get(ADMISSION_DISPATCH)
    )
    submitted = request.app[METRICS].jobs_submitted
    for job in jobs:
        submitted[job.chain_id] += 1
    accepted = [
        _accepted(request, job, reason)
        for job, reason in zip(jobs, queue_reasons(request, jobs), strict=True)
    ]
    return json_response({"jobs": accepted}, status=201)


def parse_batch(core: Core, data: dict[str, Any]) -> list[job_service.JobRequest]:
    """`{"jobs": [submission, ...]}`: each item as `POST /v1/jobs` takes it; every bad
    field of every item is named (`jobs.<index>.<field>`)."""
    errors = [(name, "unknown field") for name in sorted(set(data) - {"jobs"})]
    items = data.get("jobs")
    if not isinstance(items, list) or not 1 <= len(items) <= job_service.MAX_BATCH_JOBS:
        errors.append(("jobs", f"must be a list of 1 to {job_service.MAX_BATCH_JOBS} jobs"))
        raise ValidationFailed(errors)
    reqs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append((f"jobs.{index}", "must be an object (a job as POST /v1/jobs takes)"))
            continue
        try:
            reqs.append(parse_job_request(core, item, has_file=False))
        except ValidationFailed as exc:
            errors.extend((f"jobs.{index}.{e['field']}", e["detail"]) for e in exc.extra["errors"])
    if errors:
        raise ValidationFailed(errors)
    return reqs


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    key = caller(request)
    errors: list[tuple[str, str]] = []
    limit = query_int(request.query, "limit", 20, 1, 100, errors)
    offset = query_int(request.query, "offset", 0, 0, 10**9, errors)
    status_text = request.query.get("status") or None
    status = None
    if status_text is not None:
        try:
            status = JobStatus(status_text)
        except ValueError:
            errors.append(("status", f"must be one of {', '.join(STATUS_VALUES)}"))
    unknown = set(request.query) - {"limit", "offset", "status"}
    errors.extend((name, "unknown query parameter") for name in sorted(unknown))
    if errors:
        raise ValidationFailed(errors)
    found, total = await job_service.list_jobs(Core.of(request.app), key, status, limit, offset)
    return json_response(
        {
            "jobs": found,
            "total": total,
            "limit": limit,
            "offset": offset,
            "has_more": offset + len(found) < total,
        }
    )


@routes.get("/v1/jobs/latest")
async def latest(request: web.Request) -> web.Response:
    job = await job_service.latest_job(Core.of(request.app), caller(request))
    return json_response(job_view(job, queue_reason(request, job)))


@routes.get("/v1/jobs/history")
async def history(request: web.Request) -> web.Response:
    key = caller(request)
    errors: list[tuple[str, str]] = []
    from_ms = query_date_ms(request.query, "from", errors, end=False)
    to_ms = query_date_ms(request.query, "to", errors, end=True)
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        errors.append(("to", "must not be before from"))
    unknown = set(request.query) - {"from", "to"}
    errors.extend((name, "unknown query parameter") for name in sorted(unknown))
    if errors:
        raise ValidationFailed(errors)
    found, count, cost = await job_service.history(Core.of(request.app), key, from_ms, to_ms)
    return json_response(
        {
            "from": request.query.get("from"),
            "to": request.query.get("to"),
            "jobs": found,
            "count": count,
            "total_cost": uait_to_ait(cost),
            "truncated": count > len(found),
        }
    )


@routes.get("/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    job = await job_service.read_job(
        Core.of(request.app), caller(request), request.match_info["job_id"]
    )
    return json_response(job_view(job, queue_reason(request, job)))


@routes.put("/v1/jobs/{job_id}")
async def rename(request: web.Request) -> web.Response:
    key = client_caller(request)
    data = await read_json_object(request)
    f = Fields(data, ("name",))
    if "name" not in data:
        f.error("name", "is required")
    name = f.string("name", max_len=200)
    f.check()
    job = await job_service.rename(Core.of(request.app), key, request.match_info["job_id"], name)
    return json_response(job_view(job, queue_reason(request, job)))


@routes.delete("/v1/jobs/{job_id}")
async def cancel(request: web.Request) -> web.Response:
    job = await job_service.cancel(
        Core.of(request.app), client_caller(request), request.match_info["job_id"]
    )
    return json_response(job_view(job))


@routes.get("/v1/jobs/{job_id}/download")
async def download(request: web.Request) -> web.Response:
    job, data = await job_service.download(
        Core.of(request.app), caller(request), request.match_info["job_id"]
    )
    filename = job.output_filename or "output.bin"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:200]
    if not safe.strip("."):  # "", "." and ".." name directories, not files
        safe = "output.bin"
    return web.Response(
        body=data,
        content_type=(job.output_content_type or "application/octet-stream").split(";")[0],
        headers={
            "Content-Disposition": f'attachment; filename="{safe}"',
            "X-Output-Sha256": job.output_sha256 or "",
        },
    )


@routes.get("/v1/jobs/{job_id}/receipt")
async def receipt(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    core = Core.of(request.app)
    body, signature = await job_service.receipt(core, caller(request), job_id)
    from coordinator.service.blocks import receipt_block

    block = await receipt_block(core.db, job_id)
    return json_response({"receipt": body, "signature": signature, "block": block})
