"""`ait receipt`: fetch a job's signed receipt, and verify one offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from chain.receipts import verify_receipt
from client.cli_common import EXIT_ERROR, JsonOpt, guarded, run_api, want_json
from client.errors import AitError
from client.output import emit_json, error_line, stdout

app = typer.Typer(help="Signed receipts: fetch and verify.", no_args_is_help=True)

MAX_RECEIPT_BYTES = 1 << 20


def check_envelope(document: Any) -> tuple[dict[str, Any], list[str]]:
    """The receipt inside a saved envelope (`{"receipt", "signature", ...}` as GET
    /v1/jobs/{job_id}/receipt answers) and every failed check; no network involved."""
    if not isinstance(document, dict):
        return {}, ["the file is not a JSON object"]
    receipt = document.get("receipt")
    problems = verify_receipt(receipt, document.get("signature"))
    return (receipt if isinstance(receipt, dict) else {}), problems


@app.command()
@guarded
def verify(
    file: Annotated[
        Path, typer.Argument(help="A receipt JSON file, as `ait submit --wait` saves.")
    ],
    json_out: JsonOpt = False,
) -> None:
    """Check a receipt's fields and the miner's Ed25519 signature offline.
    Exit 0 when valid, 1 when not."""
    try:
        raw = file.read_bytes()[: MAX_RECEIPT_BYTES + 1]
    except OSError as exc:
        raise AitError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        document = None if len(raw) > MAX_RECEIPT_BYTES else json.loads(raw)
    except ValueError as exc:
        receipt: dict[str, Any] = {}
        problems = [f"the file is not JSON: {exc}"]
    else:
        receipt, problems = check_envelope(document)
        if document is None:
            problems = [f"the file is larger than {MAX_RECEIPT_BYTES} bytes"]
    valid = not problems
    if want_json(json_out):
        emit_json(
            {
                "valid": valid,
                "file": str(file),
                "job_id": receipt.get("job_id"),
                "miner_id": receipt.get("miner_id"),
                "problems": problems,
            }
        )
    elif valid:
        stdout().print(
            f"valid: receipt of {receipt.get('job_id')} signed by {receipt.get('miner_id')}",
            markup=False,
        )
    if not valid:
        for problem in problems:
            error_line(f"invalid receipt: {problem}")
        raise typer.Exit(EXIT_ERROR)


@app.command()
@guarded
def get(
    job_id: Annotated[str, typer.Argument()],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Save to this file too.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fetch a job's receipt (signature and block proof included)."""
    envelope = run_api(lambda c: c.receipt(job_id))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")
    if want_json(json_out) or output is None:
        emit_json(envelope)
    else:
        stdout().print(f"saved {output}", markup=False)
