"""Job commands of `ait`: submit, status, list, rename, cancel, download, history (and
`wait`, from client/cli_wait.py)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from client import cli_batch, cli_wait
from client.cli_common import (
    JsonOpt,
    guarded,
    parse_param,
    run_api,
    settings,
)
from client.cli_common import want_json as use_json
from client.errors import AitError
from client.output import (
    emit_json,
    fields,
    fmt,
    note,
    result_text,
    stdout,
    table,
    when,
)
from client.sdk import CoordinatorClient


class Priority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"


class Status(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"


JOB_FIELDS = (  # noqa: SIM905 - the spec's field order, one line per idea
    "job_id status progress model name miner_id chain_id created_at started_at "
    "completed_at estimated_cost cost attempts queue_reason error"
).split()


def _show_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(job)
        return
    fields(None, [(k, job.get(k)) for k in JOB_FIELDS if k in job])
    if job.get("result") is not None:
        stdout().print("result:", style="bold")
        stdout().print(result_text(job["result"]), markup=False, highlight=False)


@guarded
def submit(
    model: Annotated[str, typer.Option("--model", "-m", help="Model name, e.g. gpt2.")],
    input_text: Annotated[
        str | None,
        typer.Option("--input", "-i", help="Input text (sent as a string); - reads stdin."),
    ] = None,
    input_json: Annotated[
        str | None, typer.Option("--input-json", help="Input as a JSON value, e.g. '[[1,2]]'.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input-file", "-f", exists=True, dir_okay=False, help="Upload a file."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the job to its end.")] = False,
    priority: Annotated[Priority | None, typer.Option(help="Queue order.")] = None,
    gpu_type: Annotated[str | None, typer.Option(help="e.g. v100, a100-80gb, cpu.")] = None,
    min_vram_gb: Annotated[float | None, typer.Option(help="Minimum VRAM per GPU (GiB).")] = None,
    gpu_count: Annotated[int | None, typer.Option(help="GPUs needed.")] = None,
    timeout_seconds: Annotated[int | None, typer.Option(help="Deadline of the job.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Runtime parameter k=v (repeat).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the job.")] = None,
    chain_id: Annotated[str | None, typer.Option(help="Chain to pay on.")] = None,
    max_price: Annotated[
        float | None, typer.Option(help="Most AIT the whole job may cost.")
    ] = None,
    fail_if_unmatched: Annotated[
        bool, typer.Option(help="Refuse (422) when no miner could ever run it.")
    ] = False,
    wait_timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Submit a job; with --wait, show its progress and end with the result."""
    given = [x is not None for x in (input_text, input_json, input_file)]
    if sum(given) != 1:
        raise typer.BadParameter("give exactly one of --input, --input-json, --input-file")
    value: Any = sys.stdin.read() if input_text == "-" else input_text
    if input_json is not None:
        try:
            value = json.loads(input_json)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--input-json") from None
    requirements = {
        k: v
        for k, v in (("gpu_type", gpu_type), ("min_vram_gb", min_vram_gb), ("gpu_count", gpu_count))
        if v is not None
    }
    body: dict[str, Any] = {
        "priority": priority.value if priority else None,
        "requirements": requirements or None,
        "timeout_seconds": timeout_seconds,
        "params": dict(parse_param(p) for p in param) if param else None,
        "name": name,
        "chain_id": chain_id or settings().chain_id,
        "max_price": max_price,
        "fail_if_unmatched": True if fail_if_unmatched else None,
    }
    as_json = use_json(json_out)

    waiting: list[str] = []  # the job id, for the message when Ctrl-C stops the wait

    async def work(client: CoordinatorClient) -> tuple[dict[str, Any], Path | None]:
        accepted = await client.submit(model, value, input_file=input_file, **body)
        if not wait:
            return accepted, None
        waiting.append(accepted["job_id"])
        note(
            f"submitted {accepted['job_id']}: "
            f"estimated cost {fmt(accepted.get('estimated_cost'))} AIT"
        )
        return await cli_wait.follow(client, accepted["job_id"], wait_timeout)

    job, receipt_path = cli_wait.run_waiting(work, waiting)
    if wait:
        cli_wait.report_finished(job, receipt_path, as_json)
    elif as_json:
        emit_json(job)
    else:
        stdout().print(
            f"{job['job_id']} {job.get('status')}: estimated cost "
            f"{fmt(job.get('estimated_cost'))} AIT on {job.get('chain_id')}",
            markup=False,
        )


@guarded
def status(
    job_id: Annotated[str | None, typer.Argument(help="Job id; default: your latest job.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a job (its status, progress, cost, result)."""
    job = run_api(lambda c: c.get_job(job_id) if job_id else c.latest())
    _show_job(job, use_json(json_out))


@guarded
def list_jobs(
    status: Annotated[Status | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Jobs per page.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """List your jobs, newest first."""
    page = run_api(lambda c: c.list_jobs(status.value if status else None, limit, offset))
    if use_json(json_out):
        emit_json(page)
        return
    jobs = page.get("jobs") or []
    rows = [
        (
            j.get("job_id"),
            j.get("status"),
            j.get("model"),
            j.get("name"),
            when(j.get("created_at")),
            j.get("cost"),
        )
        for j in jobs
    ]
    more = " (more: use --offset)" if page.get("has_more") else ""
    caption = f"{len(jobs)} of {page.get('total', len(jobs))} jobs{more}"
    table(None, ["JOB", "STATUS", "MODEL", "NAME", "CREATED", "COST"], rows, caption)


@guarded
def cancel(job_id: Annotated[str, typer.Argument()], json_out: JsonOpt = False) -> None:
    """Cancel a queued or running job; its escrow comes back."""
    job = run_api(lambda c: c.cancel(job_id))
    if use_json(json_out):
        emit_json(job)
    else:
        stdout().print(f"{job.get('job_id')} {job.get('status')}", markup=False)


@guarded
def download(
    job_id: Annotated[str, typer.Argument()],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File or directory (default: .).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Download a completed job's output file."""
    path = run_api(lambda c: c.download(job_id, output))
    if use_json(json_out):
        emit_json({"job_id": job_id, "path": str(path), "bytes": path.stat().st_size})
    else:
        stdout().print(f"saved {path} ({path.stat().st_size} bytes)", markup=False)


@guarded
def history(
    date_from: Annotated[str | None, typer.Option("--from", help="First UTC date.")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="Last UTC date.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Jobs created between two UTC dates (inclusive), with totals."""
    report = run_api(lambda c: c.history(date_from, date_to))
    if use_json(json_out):
        emit_json(report)
        return
    jobs = report.get("jobs")
    if not isinstance(jobs, list):
        raise AitError("the coordinator's history answer has no jobs list")
    rows = [
        (j.get("job_id"), j.get("status"), j.get("model"), when(j.get("created_at")), j.get("cost"))
        for j in jobs
    ]
    caption = f"{fmt(report.get('count'))} jobs, total cost {fmt(report.get('total_cost'))} AIT"
    if report.get("truncated"):
        caption += f" ({len(rows)} listed: narrow the dates to see the rest)"
    table(None, ["JOB", "STATUS", "MODEL", "CREATED", "COST"], rows, caption)


@guarded
def rename(
    job_id: Annotated[str, typer.Argument()],
    name: Annotated[str, typer.Argument(help="The new label.")],
    json_out: JsonOpt = False,
) -> None:
    """Give a job a new name (label)."""
    job = run_api(lambda c: c.rename(job_id, name))
    if use_json(json_out):
        emit_json(job)
    else:
        stdout().print(f"{job.get('job_id')} is now named {job.get('name')!r}", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command("submit-batch")(cli_batch.submit_batch)
    app.command()(status)
    app.command("list")(list_jobs)
    app.command()(cancel)
    app.command()(download)
    app.command()(history)
    app.command()(rename)
    app.command("wait")(cli_wait.wait)
