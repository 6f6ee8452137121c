"""protocol.ed25519_batch: the batch verdicts are verify_hex's, item by item, including
the keys and signatures libsodium refuses; malformed items raise instead of verifying.

`AIT_REQUIRE_BATCH_VERIFY=1` (set by .ci/run) makes a missing C extension a failure, so
CI cannot pass on the inline fallback alone."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ed25519_batch, keys
from protocol.keys import SignedItem

KEY = keys.generate_private_key()
OTHER = keys.generate_private_key()
PUBLIC = keys.public_key_bytes(KEY)

needs_batch = pytest.mark.skipif(
    not ed25519_batch.AVAILABLE and os.environ.get("AIT_REQUIRE_BATCH_VERIFY") != "1",
    reason=f"batch verification unavailable: {ed25519_batch.UNAVAILABLE_REASON}",
)


def _signed(message: bytes, key: keys.PrivateKey = KEY) -> SignedItem:
    return keys.public_key_bytes(key), bytes.fromhex(keys.sign_hex(key, message)), message


def _inline(item: SignedItem) -> bool:
    public, signature, message = item
    return keys.verify_hex(public.hex(), signature.hex(), message)


def test_the_extension_is_built_where_ci_requires_it() -> None:
    if os.environ.get("AIT_REQUIRE_BATCH_VERIFY") == "1":
        assert ed25519_batch.AVAILABLE, ed25519_batch.UNAVAILABLE_REASON
    else:
        assert ed25519_batch.AVAILABLE or ed25519_batch.UNAVAILABLE_REASON


@needs_batch
def test_each_verdict_is_the_inline_one() -> None:
    good = _signed(b"pay miner_x 3 AIT")
    public, signature, message = good
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    identity = bytes.fromhex("01" + "00" * 31)  # small order: "signs" everything unchecked
    items = [
        good,
        (public, signature, message + b" more"),  # another message
        (public, flipped, message),  # another signature
        (keys.public_key_bytes(OTHER), signature, message),  # another key
        (identity, identity + bytes(32), b"pay miner_x 1000 AIT"),
        (bytes(32), bytes(64), b""),
        _signed(b""),  # the empty message, signed
        _signed(b"x" * 70_000, OTHER),  # a long one
    ]
    assert ed25519_batch.verify_many(items) == [_inline(item) for item in items]
    assert ed25519_batch.verify_many(items) == [True, False, False, False, False, False, True, True]
    assert ed25519_batch.verify_many([]) == []


@needs_batch
@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=12),
    tampered=st.sets(st.integers(min_value=0, max_value=11)),
)
def test_any_batch_agrees_with_verify_hex(messages: list[bytes], tampered: set[int]) -> None:
    items = [_signed(m) for m in messages]
    for i in tampered & set(range(len(items))):
        public, signature, message = items[i]
        items[i] = (public, signature, message + b"\x00")
    assert ed25519_batch.verify_many(items) == [_inline(item) for item in items]


@needs_batch
@pytest.mark.parametrize(
    ("items", "error"),
    [
        ([(PUBLIC[:31], bytes(64), b"")], ValueError),
        ([(PUBLIC, bytes(63), b"")], ValueError),
        ([(PUBLIC.hex(), bytes(64), b"")], TypeError),
        ([(PUBLIC, bytes(64), "text")], TypeError),
        ([(PUBLIC, bytes(64))], TypeError),
        ([[PUBLIC, bytes(64), b""]], TypeError),
        (42, TypeError),
    ],
)
def test_a_malformed_item_raises(items: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ed25519_batch.verify_many(items)  # type: ignore[arg-type]


@needs_batch
def test_batches_verify_from_several_threads_at_once() -> None:
    items = [_signed(bytes([i]) * i) for i in range(40)]
    items[7] = (items[7][0], items[7][1], b"changed")
    expected = [i != 7 for i in range(40)]
    answers: list[list[bool]] = []

    def work() -> None:
        answers.append(ed25519_batch.verify_many(items))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [expected] * 4
