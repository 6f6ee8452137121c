"""Times: integer epoch milliseconds inside, ISO 8601 UTC with 'Z' and milliseconds outside."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_ms(ms: int | None) -> str | None:
    return None if ms is None else _iso(ms)


@functools.lru_cache(maxsize=16_384)
def _iso(ms: int) -> str:
    # A job's times are formatted again for each view of it (its submit's answer, each
    # status event on a stream: ~20 a job), and a job's times share their milliseconds.
    return _iso_seconds(ms // 1000) + f"{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    # A job view formats several times of the same few seconds; strftime is the cost.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def parse_iso_ms(text: str) -> int:
    """Parse ISO 8601 (a trailing 'Z' or an offset; naive means UTC) to epoch ms."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)
