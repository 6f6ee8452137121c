"""RFC 8785 canonical encoding: vectors from the RFC and refusals we rely on."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.canonical import (
    MAX_DEPTH,
    CanonicalError,
    canonical_bytes,
    reference_canonical_bytes,
    sha256_hex,
)


def test_members_sorted_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3 example: sorting by UTF-16 puts U+1F600 (surrogates D83D) before U+FB33.
    value = {
        "\u20ac": "Euro",
        "\r": "CR",
        "\ufb33": "Hebrew",
        "1": "One",
        "\U0001f600": "E",
        "\x80": "C",
    }
    expected = (
        '{"\\r":"CR","1":"One","\x80":"C","\u20ac":"Euro","\U0001f600":"E","\ufb33":"Hebrew"}'
    )
    assert canonical_bytes(value) == expected.encode("utf-8")


def test_whitespace_free_and_nested() -> None:
    assert canonical_bytes({"b": [1, True, None, {"z": "x", "a": -5}], "a": "é"}) == (
        '{"a":"é","b":[1,true,null,{"a":-5,"z":"x"}]}'.encode()
    )


def test_control_characters_escaped_like_json_stringify() -> None:
    assert canonical_bytes('\u0001\n\t"\\/') == b'"\\u0001\\n\\t\\"\\\\/"'


@pytest.mark.parametrize("bad", [1.5, float("nan"), {1: "x"}, 2**60, "\ud800", b"raw"])
def test_refuses_values_without_a_stable_canonical_form(bad: object) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(bad)


def test_sha256_hex() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@given(st.text())
def test_strings_are_escaped_exactly_as_json_stringify(text: str) -> None:
    # The printable-ASCII shortcut must answer what the general path answers.
    try:
        expected = json.dumps(text, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return  # lone surrogates are refused (test_refuses_values_...)
    assert canonical_bytes(text) == expected


@given(st.dictionaries(st.text(), st.integers(-(2**53) + 1, 2**53 - 1), max_size=8))
def test_member_order_is_utf16_order_whatever_the_names(obj: dict[str, int]) -> None:
    if any(0xD800 <= ord(c) <= 0xDFFF for key in obj for c in key):
        return
    names = sorted(obj, key=lambda k: k.encode("utf-16-be"))
    expected = "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{obj[k]}" for k in names)
    assert canonical_bytes(obj) == (expected + "}").encode()


# -- the orjson fast path must answer exactly what the reference encoder answers ----------
_NAMES = st.one_of(st.text(max_size=6), st.sampled_from(["a", "b", "job_id", "é", "\ue000"]))
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**54), 2**54)
    | st.sampled_from([2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**64, 1.0])
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_NAMES, inner, max_size=4)
    ),
    max_leaves=20,
)


def _outcome(encode: object, value: object) -> bytes | str:
    try:
        return encode(value)  # type: ignore[operator, no-any-return]
    except CanonicalError:
        return "refused"


@given(_VALUES)
def test_fast_path_agrees_with_the_reference(value: object) -> None:
    assert _outcome(canonical_bytes, value) == _outcome(reference_canonical_bytes, value)


def test_fast_path_escapes_every_code_point_as_the_reference() -> None:
    # One string per block of code points keeps this quick; every non-surrogate is in one.
    for start in range(0, 0x110000, 0x800):
        text = "".join(
            chr(c) for c in range(start, min(start + 0x800, 0x110000)) if not 0xD800 <= c <= 0xDFFF
        )
        assert canonical_bytes({"s": text}) == reference_canonical_bytes({"s": text})


def test_depth_limit_holds_on_both_paths() -> None:
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert canonical_bytes(deep) == reference_canonical_bytes(deep)
    with pytest.raises(CanonicalError, match="nesting"):
        canonical_bytes([deep])
