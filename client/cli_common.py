"""What every `ait` command shares: settings from the context, the API call runner, and
the error guard that turns any failure into one line on stderr and a non-zero exit."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from client.config import CliSettings
from client.errors import AitError, ApiError
from client.output import emit_json, error_line, note
from client.sdk import CoordinatorClient

P = ParamSpec("P")
T = TypeVar("T")

EXIT_ERROR = 1  # an error, a job that did not complete, an invalid receipt or chain
EXIT_INTERRUPTED = 130

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]


# Set by the root callback for the command that follows (one invocation per process, or
# per CliRunner.invoke).
_SETTINGS: contextvars.ContextVar[CliSettings] = contextvars.ContextVar("ait_cli_settings")


def set_settings(value: CliSettings) -> None:
    _SETTINGS.set(value)


def settings() -> CliSettings:
    return _SETTINGS.get()


def want_json(flag: bool) -> bool:
    """`--json` may come before the command (global) or after it (per command)."""
    return flag or settings().json


def run_api(work: Callable[[CoordinatorClient], Awaitable[T]]) -> T:
    """Run `work` with a client for the configured coordinator on a fresh event loop."""
    config = settings()
    if not config.api_key:
        raise AitError(
            "no API key: pass --api-key, set AIT_API_KEY, or put api_key in the config file"
        )

    async def go() -> T:
        async with CoordinatorClient(config.coordinator, config.api_key) as client:
            return await work(client)

    return asyncio.run(go())


def guarded(command: Callable[P, T]) -> Callable[P, T]:
    """Errors become one line on stderr and exit 1; `--debug` adds the traceback. With
    `--json`, stdout still holds one JSON document: `{"error": {problem details}}`."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            note("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if getattr(exc, "exit_code", None) is not None:
                raise  # typer's own usage errors (BadParameter, ...) print themselves
            if _debug():
                traceback.print_exc(file=sys.stderr)
            message = _one_line(exc)
            if kwargs.get("json_out") or _json_mode():
                emit_json({"error": _error_document(exc, message)})
            error_line(message)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def _debug() -> bool:
    value = _SETTINGS.get(None)
    return value is not None and value.debug


def _json_mode() -> bool:
    value = _SETTINGS.get(None)
    return value is not None and value.json


def _error_document(exc: BaseException, message: str) -> dict[str, Any]:
    """With --json an error is a JSON document too: the problem details for API errors."""
    if isinstance(exc, ApiError):
        return {**exc.problem, "status": exc.status, "detail": exc.detail}
    return {"type": "client-error", "title": type(exc).__name__, "detail": message}


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, AitError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    else:
        # Not an expected failure: say what it was; --debug shows where.
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def parse_param(text: str) -> tuple[str, Any]:
    """`k=v` with v read as JSON when it parses (`n=3`, `t=0.7`, `x=[1,2]`), else a string."""
    import json

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise typer.BadParameter(f"{text!r} is not key=value", param_hint="--param")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value
