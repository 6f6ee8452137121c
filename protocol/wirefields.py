"""Field readers for the wire codec: bounded, typed reads of one JSON object's fields.

Every failure is a ``ProtocolError`` whose text names the message, the field and the
rule, e.g. ``progress: field 'percent' must be between 0 and 100``. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from protocol.limits import MAX_CONCURRENCY, MAX_ID_CHARS, MAX_NAME_CHARS

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
ADDRESS_RE = re.compile(r"^ait1[0-9a-f]{40}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
HEX128_RE = re.compile(r"^[0-9a-f]{128}$")
GPU_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")


class ProtocolError(ValueError):
    """A frame is not a valid v1 message; the text says which field and why."""


class FieldReader:
    """Reads one JSON object's fields with bounds; remembers which it used."""

    def __init__(self, where: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where} must be a JSON object")
        self.where = where
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def _get(self, name: str, optional: bool) -> Any:
        self.used.add(name)
        if name not in self.data or self.data[name] is None:
            if optional:
                return None
            raise ProtocolError(f"{self.where}: field {name!r} is required")
        return self.data[name]

    def _fail(self, name: str, what: str) -> ProtocolError:
        return ProtocolError(f"{self.where}: field {name!r} {what}")

    def text(
        self,
        name: str,
        *,
        max_chars: int = MAX_NAME_CHARS,
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] = (),
        optional: bool = False,
    ) -> Any:
        value = self._get(name, optional)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._fail(name, "must be a string")
        if len(value) > max_chars:
            raise self._fail(name, f"is longer than {max_chars} characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise self._fail(name, "is malformed")
        if choices and value not in choices:
            raise self._fail(name, f"must be one of {', '.join(choices)}")
        return value

    def ident(self, name: str) -> str:
        value: str = self.text(name, max_chars=MAX_ID_CHARS, pattern=ID_RE)
        return value

    def integer(self, name: str, lo: int, hi: int, *, optional: bool = False) -> Any:
        value = self._get(name, optional)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, "must be an integer")
        if not lo <= value <= hi:
            raise self._fail(name, f"must be between {lo} and {hi}")
        return value

    def number(self, name: str, lo: float, hi: float) -> float:
        value = self._get(name, False)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._fail(name, "must be a number")
        if not lo <= value <= hi:
            raise self._fail(name, f"must be between {lo:g} and {hi:g}")
        return float(value) if isinstance(value, float) else value

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, True)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(name, "must be true or false")
        return value

    def array(self, name: str, max_items: int, *, optional: bool = False) -> list[Any]:
        value = self._get(name, optional)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(name, "must be an array")
        if len(value) > max_items:
            raise self._fail(name, f"has more than {max_items} items")
        return value

    def ids(self, name: str, max_items: int = MAX_CONCURRENCY) -> tuple[str, ...]:
        items = self.array(name, max_items, optional=True)
        for item in items:
            if not isinstance(item, str) or not ID_RE.fullmatch(item):
                raise self._fail(name, "must hold job ids")
        return tuple(items)

    def obj(self, name: str, max_bytes: int, *, optional: bool = False) -> dict[str, Any]:
        value = self._get(name, optional)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(name, "must be a JSON object")
        # Measured as compact UTF-8 JSON, the form it travels in.
        if len(orjson.dumps(value)) > max_bytes:
            raise self._fail(name, f"is larger than {max_bytes} bytes")
        return value

    def b64(self, name: str, max_bytes: int, *, optional: bool = False) -> Any:
        value = self.text(name, max_chars=(max_bytes * 4) // 3 + 4, optional=optional)
        if value is None:
            return None
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self._fail(name, "is not valid base64") from exc
        return value

    def done(self, known: set[str]) -> None:
        extra = sorted(set(self.data) - known)
        if extra:
            raise ProtocolError(f"{self.where}: unknown field {extra[0]!r}")
