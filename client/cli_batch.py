"""`ait submit-batch FILE`: many jobs from a JSON Lines file, 100 to a request.

Each request is accepted all or none (`POST /v1/jobs/batch`). When one is refused, the
jobs of the requests before it stay submitted: the error names the refused lines and
lists those jobs, so nothing is lost and nothing is submitted twice on a retry of the
rest.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any

import typer

from client.cli_common import JsonOpt, guarded, run_api, settings
from client.cli_common import want_json as use_json
from client.errors import AitError, ApiError
from client.output import emit_json, fmt, stdout
from client.sdk import CoordinatorClient

MAX_PER_REQUEST = 100  # the API's limit for one batch
_ITEM_FIELD = re.compile(r"jobs\.(\d+)(?:\.(.*))?")

Numbered = list[tuple[int, dict[str, Any]]]  # (line number, job body)


@guarded
def submit_batch(
    path: Annotated[
        str,
        typer.Argument(
            help="JSON Lines: one job per line, as POST /v1/jobs takes it; - reads stdin."
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Submit many jobs from a JSON Lines file, 100 to a request (each all or none)."""
    jobs = read_jobs(path)
    chain_id = settings().chain_id
    if chain_id:
        for _, body in jobs:
            body.setdefault("chain_id", chain_id)

    async def work(client: CoordinatorClient) -> list[dict[str, Any]]:
        accepted: list[dict[str, Any]] = []
        for start in range(0, len(jobs), MAX_PER_REQUEST):
            chunk = jobs[start : start + MAX_PER_REQUEST]
            try:
                accepted.extend(await client.submit_batch([body for _, body in chunk]))
            except ApiError as exc:
                raise _refused(exc, chunk, accepted) from None
        return accepted

    accepted = run_api(work)
    if use_json(json_out):
        emit_json({"jobs": accepted})
        return
    for job in accepted:
        stdout().print(
            f"{job['job_id']} {job.get('status')}: estimated cost "
            f"{fmt(job.get('estimated_cost'))} AIT on {job.get('chain_id')}",
            markup=False,
        )


def read_jobs(path: str) -> Numbered:
    """The file's jobs with their line numbers; blank lines are skipped."""
    if path == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        with open(path, encoding="utf-8") as file:
            text, name = file.read(), path
    jobs: Numbered = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except ValueError as exc:
            raise AitError(f"{name}:{number}: not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise AitError(f"{name}:{number}: a job must be a JSON object")
        jobs.append((number, body))
    if not jobs:
        raise AitError(f"{name}: no jobs in it")
    return jobs


def _refused(exc: ApiError, chunk: Numbered, accepted: list[dict[str, Any]]) -> ApiError:
    """The API's refusal of one request, told in the file's line numbers, with the jobs
    already submitted by the requests before it."""
    first, last = chunk[0][0], chunk[-1][0]
    reasons = [_line_reason(error, chunk) for error in exc.problem.get("errors") or []]
    detail = f"lines {first}-{last} refused: {'; '.join(reasons) or exc.detail}"
    if accepted:
        ids = ", ".join(job["job_id"] for job in accepted)
        detail += f"; submitted before them ({len(accepted)}): {ids}"
    else:
        detail += "; nothing was submitted"
    problem = {**exc.problem, "detail": detail, "submitted": accepted}
    return ApiError(exc.status, problem, exc.headers)


def _line_reason(error: dict[str, Any], chunk: Numbered) -> str:
    field, detail = str(error.get("field", "")), str(error.get("detail", ""))
    item = _ITEM_FIELD.fullmatch(field)
    if item is None or int(item.group(1)) >= len(chunk):
        return f"{field}: {detail}"
    line = chunk[int(item.group(1))][0]
    return f"line {line}: {item.group(2) + ': ' if item.group(2) else ''}{detail}"
