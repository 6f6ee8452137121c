"""`ait`: the command line of AIT Market clients (SPEC §9).

```
ait [--coordinator URL] [--api-key KEY] [--config FILE] [--json] [--debug] COMMAND
```
Job commands live in client/cli_jobs.py, `wallet` in cli_wallet.py, `receipt` in
cli_receipt.py, `chain` in cli_chain.py. Exit codes: 0 success, 1 error (or a job that did
not complete, an invalid receipt or chain), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

import client
from client import cli_chain, cli_jobs, cli_receipt, cli_wallet
from client.cli_common import JsonOpt, guarded, run_api, set_settings, settings, want_json
from client.config import ConfigError, resolve
from client.output import emit_json, error_line, fields, fmt, stdout, table

app = typer.Typer(
    name="ait",
    help="AIT Market client: submit AI jobs to GPU miners, follow them, pay and verify.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ait {client.__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    coordinator: Annotated[
        str | None,
        typer.Option(help="Coordinator URL [env AIT_COORDINATOR; default http://127.0.0.1:8000]"),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key [env AIT_API_KEY]")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Config file [env AIT_CONFIG; default ~/.config/ait/config.toml]"),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and HTTP logs.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    try:
        config_value = resolve(
            env=os.environ,
            coordinator=coordinator,
            api_key=api_key,
            config=config,
            json=json_out,
            debug=debug,
        )
    except ConfigError as exc:
        error_line(str(exc))
        raise typer.Exit(1) from None
    set_settings(config_value)
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")


@app.command()
@guarded
def balance(
    chain_id: Annotated[
        str | None, typer.Option(help="Chain (default: the coordinator's).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Balance of the address your API key is bound to."""
    chain = chain_id or settings().chain_id
    result = run_api(lambda c: c.balance(None, chain))
    if want_json(json_out):
        emit_json(result)
        return
    keys = ("address", "chain_id", "balance", "held", "available")
    fields(
        None, [(k, f"{fmt(result.get(k))} AIT" if k in keys[2:] else result.get(k)) for k in keys]
    )


@app.command()
@guarded
def faucet(
    amount: Annotated[float, typer.Option(help="AIT to mint (at most 1000).")] = 100.0,
    chain_id: Annotated[str | None, typer.Option(help="A faucet chain.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Mint test AIT to your address on a faucet chain (ait-devnet)."""
    chain = chain_id or settings().chain_id
    result = run_api(lambda c: c.faucet(amount, None, chain))
    if want_json(json_out):
        emit_json(result)
    else:
        fields(None, sorted(result.items()))


def _gpus(miner: dict[str, Any]) -> tuple[str, str]:
    gpus = [g for g in miner.get("gpus") or [] if isinstance(g, dict)]
    kinds = ", ".join(f"{g.get('count', 1)}x {g.get('type', '?')}" for g in gpus) or "-"
    vram = ", ".join(f"{g.get('vram_gb', '?')} GiB" for g in gpus) or "-"
    return kinds, vram


def _offers(miner: dict[str, Any]) -> str:
    models = [m for m in miner.get("models") or [] if isinstance(m, dict)]
    return (
        ", ".join(f"{m.get('name')} {fmt(m.get('price'))}/{m.get('unit', 'unit')}" for m in models)
        or "-"
    )


@app.command()
@guarded
def miners(
    model: Annotated[str | None, typer.Option(help="Only miners serving this model.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Connected miners: GPUs, VRAM, models, prices, reputation."""
    result = run_api(lambda c: c.miners(model))
    if want_json(json_out):
        emit_json(result)
        return
    rows = []
    for miner in result.get("miners") or []:
        gpu, vram = _gpus(miner)
        rows.append(
            (
                miner.get("miner_id"),
                miner.get("status"),
                gpu,
                vram,
                _offers(miner),
                miner.get("jobs_completed"),
                miner.get("reputation"),
            )
        )
    columns = ["MINER", "STATUS", "GPU", "VRAM", "MODELS (AIT/unit)", "JOBS", "REPUTATION"]
    table(None, columns, rows, f"{len(rows)} miners online", wrap=["MODELS (AIT/unit)"])


@app.command()
@guarded
def models(json_out: JsonOpt = False) -> None:
    """Models served now, with miners online and the price range."""
    result = run_api(lambda c: c.models())
    if want_json(json_out):
        emit_json(result)
        return
    rows = [
        (
            m.get("model"),
            m.get("runtime"),
            m.get("miners_online"),
            m.get("unit"),
            f"{fmt(m.get('price_min'))} - {fmt(m.get('price_max'))}",
        )
        for m in result.get("models") or []
    ]
    table(None, ["MODEL", "RUNTIME", "MINERS", "UNIT", "PRICE (AIT/unit)"], rows)


@app.command()
@guarded
def me(json_out: JsonOpt = False) -> None:
    """The address, role and key id of your API key."""
    result = run_api(lambda c: c.me())
    if want_json(json_out):
        emit_json(result)
    else:
        fields(None, [(k, result.get(k)) for k in ("address", "role", "key_id")])
        stdout().print(f"coordinator {settings().coordinator}", markup=False)


@app.command("config")
@guarded
def show_config(json_out: JsonOpt = False) -> None:
    """The settings in effect (flags > environment > config file); the key is masked."""
    config = settings()
    key = config.api_key
    document = {
        "coordinator": config.coordinator,
        "api_key": f"{key[:8]}..." if key else None,
        "chain_id": config.chain_id,
        "receipt_dir": str(config.receipt_dir),
        "wallet_key_file": str(config.wallet_path),
        "config_file": str(config.config_path),
    }
    if want_json(json_out):
        emit_json(document)
    else:
        fields(None, document.items())


cli_jobs.register(app)
app.add_typer(cli_wallet.app, name="wallet")
app.add_typer(cli_receipt.app, name="receipt")
app.add_typer(cli_chain.app, name="chain")


def main() -> None:
    app(prog_name="ait")
