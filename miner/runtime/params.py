"""Validation of job params and inputs shared by the runtimes (pure, no torch).

Every check raises ``JobFailed`` with a message naming the field, so a client learns
exactly what to fix. Numbers may arrive as JSON numbers or as strings (``ait submit
--param k=v`` may pass text), so numeric strings are accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from miner.runtime.base import JobCancelled, JobContext, JobFailed


def check_known(params: Mapping[str, Any], allowed: Iterable[str], runtime: str) -> None:
    """Fail on any param this runtime does not understand (a typo must not pass silently)."""
    if not isinstance(params, Mapping):
        raise JobFailed(f"params must be a JSON object, not {type(params).__name__}")
    known = set(allowed)
    unknown = sorted(str(k) for k in params if k not in known)
    if unknown:
        raise JobFailed(
            f"unknown param(s) for {runtime}: {', '.join(unknown)}"
            f" (known: {', '.join(sorted(known)) or 'none'})"
        )


def get_int(
    params: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int
) -> int | None:
    """An integer param within [lo, hi], or ``default`` when absent or null."""
    value = params.get(name)
    if value is None:
        return default
    number: float
    if isinstance(value, bool):
        raise JobFailed(f"param {name} must be an integer, not a boolean")
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise JobFailed(f"param {name} must be an integer, got {value!r}") from None
    else:
        raise JobFailed(f"param {name} must be an integer, got {type(value).__name__}")
    if not math.isfinite(number) or number != int(number):
        raise JobFailed(f"param {name} must be an integer, got {value!r}")
    result = int(number)
    if not lo <= result <= hi:
        raise JobFailed(f"param {name} must be between {lo} and {hi}, got {result}")
    return result


def require_int(params: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = get_int(params, name, default, lo, hi)
    assert value is not None
    return value


def get_float(params: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    """A finite float param within [lo, hi], or ``default`` when absent or null."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        raise JobFailed(f"param {name} must be a number, not a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise JobFailed(f"param {name} must be a number, got {value!r}") from None
    else:
        raise JobFailed(f"param {name} must be a number, got {type(value).__name__}")
    if not math.isfinite(number) or not lo <= number <= hi:
        raise JobFailed(f"param {name} must be between {lo:g} and {hi:g}, got {value!r}")
    return number


def get_bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise JobFailed(f"param {name} must be true or false, got {value!r}")


def get_choice(params: Mapping[str, Any], name: str, default: str, choices: Iterable[str]) -> str:
    value = params.get(name)
    if value is None:
        return default
    options = list(choices)
    if not isinstance(value, str) or value not in options:
        raise JobFailed(f"param {name} must be one of {', '.join(options)}, got {value!r}")
    return value


def option_int(options: Mapping[str, Any], name: str, default: int) -> int:
    """A positive integer from a model's config options (the operator's limits)."""
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"model option {name} must be a positive integer, got {value!r}")
    return value


def file_input(value: Any) -> Any:
    """A file input (bytes) as the JSON it holds, else as UTF-8 text; other values as is."""
    if not isinstance(value, (bytes, bytearray)):
        return value
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise JobFailed("input file is neither JSON nor UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def text_list(value: Any, what: str, max_items: int, max_chars: int) -> tuple[list[str], bool]:
    """A string or a list of strings as a list; the flag says whether one string came in."""
    if isinstance(value, str):
        items, single = [value], True
    elif isinstance(value, list) and value:
        items, single = value, False
    elif isinstance(value, list):
        raise JobFailed(f"input must hold at least one {what}")
    else:
        raise JobFailed(f"input must be a string or a list of strings, not {_kind(value)}")
    if len(items) > max_items:
        raise JobFailed(f"input holds {len(items)} {what}s; at most {max_items} per job")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise JobFailed(f"input[{i}] must be a string, not {_kind(item)}")
        if len(item) > max_chars:
            raise JobFailed(f"input[{i}] is {len(item)} characters; at most {max_chars}")
    return items, single


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return "a file (bytes)"
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def check_cancelled(ctx: JobContext) -> None:
    """Stop between steps once the job was cancelled."""
    if ctx.cancelled.is_set():
        raise JobCancelled("job cancelled")
