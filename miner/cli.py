"""`miner` command line: run the daemon, make a key file, show what this host offers.

Thin on purpose: settings come from ``miner.config.load_settings`` (file, then ``AIT_*``
environment, then these flags); the work is ``miner.daemon.MinerDaemon``. Errors are one
line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from miner import __version__
from miner.config import ConfigError, MinerSettings, load_settings
from miner.gpu import DeviceError, probe
from protocol.eventloop import run as run_event_loop
from protocol.gc_tuning import tune_gc_after_startup
from protocol.keys import KeyFileError
from protocol.logfmt import log_to_stderr
from protocol.money import format_ait

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="AIT Market miner: sell this host's GPU (or CPU) time to the coordinator.",
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="miner TOML (default configs/miner.toml)")
]
KeyFileOpt = Annotated[
    Path | None, typer.Option("--key-file", help="Ed25519 key file (made on first run)")
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _settings(config: Path | None, **flags: Any) -> MinerSettings:
    try:
        return load_settings(config, overrides=flags)
    except ConfigError as exc:
        _fail(str(exc))


def _setup_logging(level: str) -> None:
    try:
        log_to_stderr(level)
    except ValueError:
        _fail(f"unknown --log-level {level!r} (debug, info, warning, error)")


@app.command()
def run(
    config: ConfigOpt = None,
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", help="coordinator URL, e.g. http://host:8000")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="miner-role API key (or AIT_API_KEY)")
    ] = None,
    key_file: KeyFileOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="auto|cpu|cuda|cuda:N")] = None,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="jobs run at once")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Connect to the coordinator and serve jobs until SIGTERM/SIGINT."""
    from miner.daemon import MinerDaemon

    settings = _settings(
        config,
        coordinator=coordinator,
        api_key=api_key,
        key_file=key_file,
        device=device,
        max_concurrency=max_concurrency,
    )
    if not settings.api_key:
        _fail("no API key: set api_key in the config, AIT_API_KEY or --api-key")
    if not settings.models:
        _fail("no [[models]] in the config: this miner would serve nothing")
    for index, spec in enumerate(settings.models):
        if spec.path is not None and not Path(spec.path).exists():
            _fail(f"models[{index}] ({spec.name}): path {spec.path} does not exist")
    _setup_logging(log_level)
    try:
        daemon = MinerDaemon(settings)
    except (KeyFileError, DeviceError, ValueError) as exc:
        _fail(str(exc))
    run_event_loop(_serve(daemon))


async def _serve(daemon: Any) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        # First signal: finish or give back running jobs; second: leave now.
        nonlocal signals
        signals += 1
        if signals == 1:
            logging.getLogger("miner").info("shutting down (signal again to leave at once)")
            task = loop.create_task(daemon.shutdown())
            tasks.add(task)
        else:
            task = loop.create_task(daemon.shutdown(0))
            tasks.add(task)

    tasks: set[asyncio.Task[None]] = set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    logging.getLogger("miner").info(
        "miner %s starting", daemon.miner_id, extra={"miner_id": daemon.miner_id}
    )
    tune_gc_after_startup()  # once the daemon is built (models load on first use)
    await daemon.run()
    for task in tasks:
        await task


@app.command()
def keygen(
    key_file: KeyFileOpt = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing key file")] = False,
) -> None:
    """Make a new key file (mode 0600) and print its miner id and public key as JSON."""
    from miner.identity import new_identity

    path = key_file or _settings(None).key_file
    try:
        ident = new_identity(path, overwrite=force)
    except (FileExistsError, OSError) as exc:
        _fail(str(exc))
    typer.echo(
        json.dumps(
            {
                "key_file": str(path),
                "miner_id": ident.miner_id,
                "public_key": ident.public_key,
                "key_address": ident.key_address,
            }
        )
    )


@app.command()
def info(
    config: ConfigOpt = None,
    key_file: KeyFileOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="auto|cpu|cuda|cuda:N")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document on stdout")] = False,
) -> None:
    """Detected devices, configured models and prices, and this host's miner id."""
    from miner.identity import load_identity

    settings = _settings(config, key_file=key_file, device=device)
    try:
        found = probe(settings.device)
    except DeviceError as exc:
        _fail(str(exc))
    miner_id = None
    if settings.key_file.exists():
        try:
            miner_id = load_identity(settings.key_file, create=False).miner_id
        except KeyFileError as exc:
            _fail(str(exc))
    doc = {
        "version": __version__,
        "miner_id": miner_id,
        "key_file": str(settings.key_file),
        "coordinator": settings.coordinator,
        "device": found.runtime_device,
        "driver": found.driver,
        "devices": [
            {"index": d.index, "name": d.name, "type": d.gpu_type, "vram_gb": d.vram_gb}
            for d in found.devices
        ],
        "gpus": [g.to_json() for g in found.gpus()],
        "max_concurrency": settings.max_concurrency,
        "models": [
            {
                "name": m.name,
                "runtime": m.runtime,
                "path": m.path,
                "unit": m.unit,
                "price": format_ait(m.price_uait_per_unit),
                "price_uait_per_unit": m.price_uait_per_unit,
            }
            for m in settings.models
        ],
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"miner {miner_id or '(no key file yet)'}  ·  device {found.runtime_device}")
    gpus = Table("type", "VRAM GiB", "count", "utilisation %", title="devices")
    for g in found.gpus():
        gpus.add_row(g.gpu_type, str(g.vram_gb), str(g.count), str(g.utilisation))
    console.print(gpus)
    models = Table("model", "runtime", "unit", "price AIT/unit", "path", title="models")
    for m in settings.models:
        models.add_row(m.name, m.runtime, m.unit, format_ait(m.price_uait_per_unit), m.path or "")
    console.print(models)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
