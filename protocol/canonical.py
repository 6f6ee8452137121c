"""RFC 8785 (JSON Canonicalization Scheme) for the values we sign.

Signed documents hold no floats (amounts and units are integers), so the number rules
of RFC 8785 reduce to integers in the IEEE-754 safe range; a float is refused outright
rather than serialized in a way another implementation might not reproduce.

For such values RFC 8785 output is JSON with members sorted, no whitespace, and strings
escaped as ECMAScript's JSON.stringify does, which is what orjson writes with sorted keys
(it escapes exactly the same characters, checked over every code point in the tests)
as long as every member name is ASCII: orjson sorts names by code point, RFC 8785 by UTF-16
code unit, and the two orders differ only beyond ASCII. So a value made of plain dicts
with ASCII names, lists, strings, integers, booleans and null is encoded by orjson (~7x
faster: receipts are encoded on every result and every block entry); anything else goes
through `reference_canonical_bytes`, which the fast path must always agree with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64


class CanonicalError(ValueError):
    """The value cannot be put in canonical form (float, non-string key, bad string...)."""


def _utf16_key(key: str) -> bytes:
    # RFC 8785 §3.2.3: members are sorted by their names as arrays of UTF-16 code units.
    return key.encode("utf-16-be", errors="surrogatepass")


def _encode_string(value: str) -> str:
    # Most strings we sign (ids, hex, addresses) are printable ASCII without a quote or
    # backslash: nothing to escape. (This check is only a shortcut; anything it lets
    # through json.dumps would have returned unchanged.)
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    # json.dumps with ensure_ascii=False escapes exactly what RFC 8785 (ECMAScript
    # JSON.stringify) escapes: quote, backslash, and control characters below U+0020.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError("string holds a lone surrogate") from exc
    return json.dumps(value, ensure_ascii=False)


def _encode(value: Any, depth: int, out: list[str]) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalError(f"nesting deeper than {MAX_DEPTH}")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise CanonicalError(f"integer {value} is outside the IEEE-754 safe range")
        out.append(str(int(value)))
    elif isinstance(value, float):
        raise CanonicalError("floats are not allowed in signed documents; use integers")
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalError(f"object key {key!r} is not a string")
        out.append("{")
        # For ASCII names UTF-16 order is plain string order (the common case, cheaper).
        ascii_names = all(key.isascii() for key in value)
        for index, key in enumerate(
            sorted(value) if ascii_names else sorted(value, key=_utf16_key)
        ):
            if index:
                out.append(",")
            out.append(_encode_string(key))
            out.append(":")
            _encode(value[key], depth + 1, out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, depth + 1, out)
        out.append("]")
    else:
        raise CanonicalError(f"type {type(value).__name__} has no JSON form")


_SCALARS = frozenset({str, int, bool, type(None)})
# Sorted members; an integer beyond +-(2**53 - 1) raises (as a lone surrogate does).
_ORJSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER


def _plain(value: Any, depth: int) -> bool:
    """True when orjson's sorted output is the canonical form of `value`: only dicts with
    ASCII string names, lists, tuples, str, int, bool and None, at most MAX_DEPTH deep."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            if type(item) not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(type(item) in _SCALARS or _plain(item, depth + 1) for item in value)
    return False


def canonical_bytes(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (integers only, no floats)."""
    if _plain(value, 0):
        try:
            return orjson.dumps(value, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass  # out-of-range integer or lone surrogate: the reference names the fault
    return reference_canonical_bytes(value)


def reference_canonical_bytes(value: Any) -> bytes:
    """RFC 8785 in plain Python, for every value; `canonical_bytes` takes a faster path
    where it can, and must give the same bytes (or the same refusal)."""
    out: list[str] = []
    _encode(value, 0, out)
    return "".join(out).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
