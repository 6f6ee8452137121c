"""`coordinator`: serve the API and manage API keys (thin; the work is in the services)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from coordinator.settings import Settings, SettingsError, load_settings
from protocol.eventloop import run as run_event_loop
from protocol.logfmt import log_to_stderr

T = TypeVar("T")

app = typer.Typer(
    name="coordinator",
    help="AIT Market coordinator: REST API, miner hub, scheduler and ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML file (configs/coordinator.toml shape).")
]
DbOpt = Annotated[
    str | None, typer.Option("--db", help="Database URL; empty: SQLite in the data dir.")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Data directory.")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except SettingsError as exc:
        _fail(str(exc))
        raise AssertionError from exc  # unreachable: _fail exits


def _with_db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from coordinator.db.database import Database
    from coordinator.db.migrations import SchemaError

    async def main() -> T:
        db = await Database.open(settings.db_url)
        try:
            return await work(db)
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except OSError as exc:
        _fail(f"cannot open the database: {exc}")
    except SchemaError as exc:
        _fail(str(exc))
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "asyncpg")):
            _fail(f"database error: {str(exc).splitlines()[0]}")
        raise
    raise AssertionError  # unreachable


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port.")] = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    default_chain: Annotated[str | None, typer.Option("--default-chain")] = None,
    fee_bps: Annotated[int | None, typer.Option("--fee-bps", help="Protocol fee.")] = None,
    max_body_bytes: Annotated[int | None, typer.Option("--max-body-bytes")] = None,
    lease_seconds: Annotated[float | None, typer.Option("--lease-seconds")] = None,
    heartbeat_seconds: Annotated[float | None, typer.Option("--heartbeat-seconds")] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts")] = None,
    block_interval_seconds: Annotated[
        float | None, typer.Option("--block-interval-seconds")
    ] = None,
    chains: Annotated[
        str | None, typer.Option("--chains", help='e.g. "ait-devnet:faucet,ait-testnet"')
    ] = None,
    rate_limit: Annotated[
        list[str] | None,
        typer.Option("--rate-limit", help="ROLE:PER_MINUTE:PER_HOUR (repeatable; 0 = none)"),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug|info|warning|error")
    ] = "info",
) -> None:
    """Serve the REST API and the miner hub."""
    settings = _settings(
        config,
        host=host,
        port=port,
        db=db,
        data_dir=data_dir,
        default_chain=default_chain,
        fee_bps=fee_bps,
        max_body_bytes=max_body_bytes,
        lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds,
        max_attempts=max_attempts,
        block_interval_seconds=block_interval_seconds,
        chains=chains,
        rate_limits=rate_limit or None,
    )
    try:
        log_to_stderr(log_level)
    except ValueError:
        _fail(f"unknown --log-level {log_level!r} (debug, info, warning, error)")
    from coordinator.db.migrations import SchemaError

    try:
        run_event_loop(_serve(settings))
    except OSError as exc:
        _fail(f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}")
    except SchemaError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass


async def _serve(settings: Settings) -> None:
    from aiohttp import web

    from coordinator.app import create_app
    from protocol.gc_tuning import tune_gc_after_startup

    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        for address in runner.addresses:  # the real port, also with --port 0
            typer.echo(f"coordinator listening on http://{address[0]}:{address[1]}", err=True)
        tune_gc_after_startup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        logging.getLogger(__name__).info("shutting down")
    finally:
        await runner.cleanup()


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option("--role", help="client | miner | admin")],
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Wallet address to bind (default: new).")
    ] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create an API key; prints one JSON object (api_key, role, address, key_id)."""
    from coordinator.service.keys import KeyError_, create_key

    settings = _settings(config, db=db, data_dir=data_dir)
    try:
        api_key, record, key_file = _with_db(
            settings, lambda d: create_key(d, role, name, address, settings.data_dir)
        )
    except KeyError_ as exc:
        _fail(str(exc))
        return
    out = {
        "api_key": api_key,
        "key_id": record.key_id,
        "role": record.role,
        "address": record.address,
        "name": record.name,
    }
    if key_file is not None:
        out["wallet_key_file"] = str(key_file)
    typer.echo(json.dumps(out))


@keys_app.command("list")
def keys_list(
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """List API keys (never the secrets, which are stored only hashed)."""
    from coordinator.service.keys import list_keys
    from protocol.timefmt import iso_ms

    settings = _settings(config, db=db, data_dir=data_dir)
    found = _with_db(settings, list_keys)
    rows = [
        {
            "key_id": k.key_id,
            "role": k.role,
            "address": k.address,
            "name": k.name,
            "created_at": iso_ms(k.created_at_ms),
            "revoked_at": iso_ms(k.revoked_at_ms),
        }
        for k in found
    ]
    if as_json:
        typer.echo(json.dumps({"keys": rows}))
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        typer.echo(
            f"{row['key_id']}  {row['role']:<6} {row['address']}  {state}  {row['name'] or ''}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key_id to revoke.")],
    config: ConfigOpt = None,
    db: DbOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Revoke an API key: it answers 401 from the next request on."""
    from coordinator.service.keys import revoke_key
    from protocol.timefmt import iso_ms

    settings = _settings(config, db=db, data_dir=data_dir)
    record = _with_db(settings, lambda d: revoke_key(d, key_id))
    if record is None:
        _fail(f"no key {key_id!r}")
        return
    typer.echo(json.dumps({"key_id": record.key_id, "revoked_at": iso_ms(record.revoked_at_ms)}))


def main() -> None:
    app()
