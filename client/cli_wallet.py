"""`ait wallet`: a local Ed25519 key (the address you can be paid at) and ledger history."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from client.cli_common import JsonOpt, guarded, run_api, settings, want_json
from client.errors import AitError
from client.output import emit_json, fields, fmt, table, when
from protocol.keys import address_of, generate_private_key, public_key_hex, save_key_file

app = typer.Typer(help="Wallet key and ledger history.", no_args_is_help=True)


@app.command()
@guarded
def create(
    key_file: Annotated[
        Path | None,
        typer.Option(help="Where to write the key (default ~/.local/share/ait/wallet.key)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Make an Ed25519 key pair, save it (mode 0600) and print its address."""
    path = key_file or settings().wallet_path
    if path.exists() and not force:
        raise AitError(f"{path} already exists; use --force to replace it (the old key is lost)")
    private_key = generate_private_key()
    save_key_file(path, private_key)
    document = {
        "address": address_of(private_key),
        "public_key": public_key_hex(private_key),
        "key_file": str(path),
    }
    if want_json(json_out):
        emit_json(document)
    else:
        fields(None, document.items())


@app.command()
@guarded
def history(
    chain_id: Annotated[
        str | None, typer.Option(help="Chain (default: the coordinator's).")
    ] = None,
    date_from: Annotated[str | None, typer.Option("--from", help="First UTC date.")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="Last UTC date.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Entries per page.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Ledger entries of the address your API key is bound to."""
    chain = chain_id or settings().chain_id
    result = run_api(
        lambda c: c.wallet_history(None, chain, date_from, date_to, limit=limit, offset=offset)
    )
    if want_json(json_out):
        emit_json(result)
        return
    entries = [e for e in result.get("entries") or [] if isinstance(e, dict)]
    columns = ["TIME", "KIND", "AMOUNT (AIT)", "ACCOUNT", "COUNTERPARTY", "TRANSFER"]
    rows = [
        (
            when(e.get("created_at")),
            e.get("kind"),
            _signed(e),
            e.get("account"),
            _account(e.get("counterparty")),
            e.get("transfer_id"),
        )
        for e in entries
    ]
    more = " (more: use --offset)" if result.get("has_more") else ""
    caption = f"{len(rows)} of {result.get('total', len(rows))} entries{more}"
    table(None, columns, rows, caption, wrap=["COUNTERPARTY", "TRANSFER"])


def _signed(entry: dict[str, Any]) -> str:
    amount = fmt(entry.get("amount"))
    if amount in ("0", "-"):
        return amount
    return ("+" if entry.get("direction") == "in" else "-") + amount


def _account(value: object) -> str:
    if isinstance(value, dict):
        return f"{value.get('address')}:{value.get('kind')}"
    return fmt(value)
