"""Following a job to its end: `ait submit --wait` and `ait wait JOB`.

The progress bar (stderr) is fed by the job's event stream; at the end the result goes to
stdout, the cost and the saved receipt to stderr, and a job that did not complete exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from client.cli_common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    JsonOpt,
    guarded,
    run_api,
    settings,
    want_json,
)
from client.errors import ApiError
from client.output import emit_json, error_line, fmt, note, result_text, stdout
from client.progress import WaitProgress
from client.sdk import CoordinatorClient

Finished = tuple[dict[str, Any], Path | None]  # the final job and where its receipt went


async def follow(client: CoordinatorClient, job_id: str, wait_timeout: float | None) -> Finished:
    with WaitProgress(job_id) as bar:
        job = await client.wait(job_id, timeout_s=wait_timeout, on_event=bar.update)
        bar.update(job)
    receipt_path = None
    if job.get("status") == "completed":
        receipt_path = await _save_receipt(client, job_id)
    return job, receipt_path


def run_waiting(
    work: Callable[[CoordinatorClient], Awaitable[Finished]], waiting: list[str]
) -> Finished:
    """`run_api(work)`; Ctrl-C while following a job says that the job keeps running."""
    try:
        return run_api(work)
    except KeyboardInterrupt:
        if not waiting:
            raise
        job_id = waiting[0]
        note(
            f"stopped waiting; {job_id} keeps running (ait wait {job_id} follows it again, "
            f"ait cancel {job_id} stops it)"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def report_finished(job: dict[str, Any], receipt_path: Path | None, as_json: bool) -> None:
    if receipt_path is not None:
        job = {**job, "receipt_file": str(receipt_path)}
    if as_json:
        emit_json(job)
    elif job.get("status") == "completed":
        result = job.get("result")
        if isinstance(result, dict) and result.get("inline") is False:
            # Too large (or binary) to show: the summary here, the bytes via download.
            stdout().print(result_text(result.get("summary")), markup=False)
            note(
                f"output: {result.get('bytes')} bytes of {result.get('content_type')}; "
                f"get it with: ait download {job['job_id']} -o FILE"
            )
        else:
            stdout().print(result_text(result), markup=False)
        note(f"cost: {fmt(job.get('cost'))} AIT · receipt saved to {receipt_path or '-'}")
    if job.get("status") != "completed":
        reason = job.get("error") or "no reason given"
        error_line(f"job {job['job_id']} ended {job.get('status')}: {reason}")
        raise typer.Exit(EXIT_ERROR)


async def _save_receipt(client: CoordinatorClient, job_id: str) -> Path | None:
    """Save the receipt as `<receipt_dir>/<job_id>.json`. The job is done either way, so a
    missing receipt or an unwritable directory only warns (`ait receipt get` retries)."""
    try:
        envelope = await client.receipt(job_id)
    except ApiError as exc:
        note(f"warning: no receipt for {job_id}: {exc}")
        return None
    target = settings().receipt_dir / f"{job_id}.json"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        note(f"warning: cannot save the receipt to {target}: {exc.strerror or exc}")
        return None
    return target


@guarded
def wait(
    job_id: Annotated[str, typer.Argument()],
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up after this many seconds.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Follow a submitted job to its end, as `submit --wait` does."""

    async def work(client: CoordinatorClient) -> Finished:
        return await follow(client, job_id, timeout)

    job, receipt_path = run_waiting(work, [job_id])
    report_finished(job, receipt_path, want_json(json_out))
