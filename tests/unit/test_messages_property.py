"""Property tests of the wire codec: valid messages round-trip; any other input is refused
with ``ProtocolError`` and nothing else (the hub must never crash on a frame)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.messages import (
    Cancel,
    Failed,
    Heartbeat,
    Progress,
    ProtocolError,
    Reject,
    Release,
    Resume,
    decode,
    encode,
)

ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
text = st.text(max_size=200)
job_lists = st.lists(ids, max_size=8).map(tuple)

messages = st.one_of(
    st.builds(Heartbeat, running=job_lists, utilisation=st.integers(0, 100)),
    st.builds(Progress, job_id=ids, percent=st.integers(0, 100), message=st.none() | text),
    st.builds(Failed, job_id=ids, error=text, retryable=st.booleans()),
    st.builds(Release, job_ids=job_lists, reason=text.filter(bool), draining=st.booleans()),
    st.builds(Resume, running=job_lists, pending_results=job_lists),
    st.builds(Cancel, job_id=ids, reason=text),
    st.builds(
        Reject,
        job_id=ids,
        code=st.sampled_from(["bad-signature", "not-bound", "bad-output", "lease-lost"]),
        reason=text,
    ),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(messages)
def test_valid_messages_round_trip(msg: Any) -> None:
    assert decode(encode(msg)) == msg


@settings(max_examples=200)
@given(
    st.sampled_from(["heartbeat", "progress", "result", "hello", "assign", "release", "nope"]),
    st.dictionaries(st.text(max_size=16), json_values, max_size=6),
)
def test_arbitrary_objects_are_refused_cleanly(kind: str, fields: dict[str, Any]) -> None:
    frame = json.dumps({**fields, "v": 1, "type": kind})
    with contextlib.suppress(ProtocolError):
        decode(frame)


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(frame: bytes | str) -> None:
    with contextlib.suppress(ProtocolError):
        decode(frame)


def test_deep_nesting_is_refused_cleanly() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for frame in (deep, '{"v": 1, "type": "heartbeat", "x": ' + deep + "}"):
        with contextlib.suppress(ProtocolError):
            decode(frame)
