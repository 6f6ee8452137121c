"""Field checks that collect every problem, so one 422 names each bad field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from coordinator.errors import ValidationFailed
from protocol.money import ait_to_uait

_MISSING = object()


class Fields:
    """Reads fields of one JSON object; unknown fields are errors."""

    def __init__(self, data: Mapping[str, Any], allowed: Sequence[str], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix
        self.errors: list[tuple[str, str]] = []
        for name in data:
            if name not in allowed:
                self.error(name, "unknown field")

    def error(self, name: str, text: str) -> None:
        self.errors.append((self.prefix + name, text))

    def _get(self, name: str, required: bool) -> Any:
        value = self.data.get(name, _MISSING)
        if value is _MISSING and required:
            self.error(name, "is required")
        return value

    def string(
        self,
        name: str,
        *,
        required: bool = False,
        nullable: bool = True,
        max_len: int = 200,
        min_len: int = 0,
        pattern: re.Pattern[str] | None = None,
        default: str | None = None,
    ) -> str | None:
        value = self._get(name, required)
        if value is _MISSING or (value is None and nullable and not required):
            return default
        if not isinstance(value, str):
            self.error(name, "must be a string")
            return default
        if not min_len <= len(value) <= max_len:
            self.error(name, f"must be {min_len} to {max_len} characters long")
            return default
        if "\x00" in value:  # PostgreSQL text cannot store NUL (a 500 otherwise)
            self.error(name, "must not contain NUL characters")
            return default
        if pattern is not None and not pattern.fullmatch(value):
            self.error(name, f"must match {pattern.pattern}")
            return default
        return value

    def integer(self, name: str, *, low: int, high: int, default: int | None = None) -> int | None:
        value = self._get(name, False)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(name, "must be an integer")
            return default
        if not low <= value <= high:
            self.error(name, f"must be between {low} and {high}")
            return default
        return value

    def number(
        self, name: str, *, low: float, high: float, default: float | None = None
    ) -> float | None:
        value = self._get(name, False)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(name, "must be a number")
            return default
        if not math.isfinite(value):
            self.error(name, "must be a number")
            return default
        if not low <= value <= high:
            self.error(name, f"must be between {low:g} and {high:g}")
            return default
        return float(value)

    def amount_uait(
        self, name: str, *, required: bool = False, low_uait: int = 0, high_uait: int
    ) -> int | None:
        """An AIT amount (JSON number, at most 6 decimals) as integer micro-AIT."""
        value = self._get(name, required)
        if value is _MISSING or (value is None and not required):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(name, "must be a number of AIT")
            return None
        try:
            uait = ait_to_uait(value)
        except ValueError as exc:
            self.error(name, str(exc))
            return None
        if not low_uait <= uait <= high_uait:
            self.error(name, f"must be between {low_uait / 1e6:g} and {high_uait / 1e6:g} AIT")
            return None
        return uait

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, bool):
            self.error(name, "must be true or false")
            return default
        return value

    def choice(self, name: str, options: Sequence[str], default: str) -> str:
        value = self._get(name, False)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, str) or value not in options:
            self.error(name, f"must be one of {', '.join(options)}")
            return default
        return value

    def mapping(self, name: str) -> Mapping[str, Any]:
        value = self._get(name, False)
        if value is _MISSING or value is None:
            return {}
        if not isinstance(value, dict):
            self.error(name, "must be an object")
            return {}
        return value

    def check(self) -> None:
        if self.errors:
            raise ValidationFailed(self.errors)


def query_int(
    query: Mapping[str, str],
    name: str,
    default: int,
    low: int,
    high: int,
    errors: list[tuple[str, str]],
) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        errors.append((name, "must be an integer"))
        return default
    if not low <= value <= high:
        errors.append((name, f"must be between {low} and {high}"))
        return default
    return value


def query_date_ms(
    query: Mapping[str, str], name: str, errors: list[tuple[str, str]], *, end: bool
) -> int | None:
    """`YYYY-MM-DD` (UTC day; `end` gives the start of the next day, so ranges are
    inclusive) or a full ISO 8601 time."""
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            ms = int(moment.timestamp() * 1000)
            return ms + 86_400_000 if end else ms
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        errors.append((name, "must be a date YYYY-MM-DD or an ISO 8601 time"))
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ms = int(value.timestamp() * 1000)
    return ms + 1 if end else ms
