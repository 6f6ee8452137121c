"""coordinator.hub.verifier: which frames go to the verify thread, what comes back, and
that every other frame is left to the inline check (the fallback where the C extension
is not built); a receipt's signed item and the verdict `verify_receipt` is given."""

from __future__ import annotations

from typing import Any

import pytest

from chain.receipts import build_receipt, sign_receipt, signed_item, verify_receipt
from coordinator.hub.verifier import MIN_BATCH, SignatureVerifier, Verdicts
from coordinator.metrics import Metrics
from protocol import ed25519_batch, keys
from protocol.messages import Heartbeat, Message, ProtocolError, Result

KEY = keys.generate_private_key()

needs_batch = pytest.mark.skipif(
    not ed25519_batch.AVAILABLE, reason=f"no batch verification: {ed25519_batch.UNAVAILABLE_REASON}"
)


def _result(n: int, **signature_changes: Any) -> Result:
    receipt = build_receipt(
        job_id=f"job_{n}",
        chain_id="ait-devnet",
        miner_address=keys.address_of(KEY),
        client_address=keys.address_of(KEY),
        model="echo",
        input_sha256="a" * 64,
        output_sha256="b" * 64,
        units=n,
        unit="byte",
        price_uait_per_unit=1,
        attempt=1,
        started_at="2026-12-07T00:00:00.000Z",
        completed_at="2026-12-07T00:00:01.000Z",
        public_key=keys.public_key_hex(KEY),
    )
    signature = {**sign_receipt(KEY, receipt), **signature_changes}
    return Result(f"job_{n}", receipt, signature, "", "application/json", "output.json")


def _flipped(msg: Result) -> Result:
    sig = str(msg.signature["sig"])
    return Result(**{**msg.__dict__, "signature": {**msg.signature, "sig": sig[::-1]}})


@needs_batch
async def test_a_frame_of_results_is_verified_in_one_batch() -> None:
    metrics = Metrics()
    verifier = SignatureVerifier(metrics)
    results = [_result(n) for n in range(6)]
    results[2] = _flipped(results[2])
    not_hex = _result(9, sig="zz" * 64)
    frame: list[Message | ProtocolError] = [
        *results,
        Heartbeat((), 0),
        ProtocolError("bad"),
        not_hex,
    ]
    verdicts = Verdicts()
    try:
        await verifier.verify_frame(frame, verdicts)
    finally:
        verifier.close()
    assert [verdicts.take(r) for r in results] == [True, True, False, True, True, True]
    assert [verdicts.take(r) for r in results] == [None] * 6  # each verdict taken once
    assert verdicts.take(not_hex) is None  # left to the inline check, which names it
    assert len(verdicts) == 0
    assert metrics.signatures_verified == {"thread": 6}


@needs_batch
async def test_an_equal_message_is_not_another_ones_verdict() -> None:
    verifier = SignatureVerifier(Metrics())
    results = [_result(n) for n in range(MIN_BATCH)]
    verdicts = Verdicts()
    try:
        await verifier.verify_frame(results, verdicts)
    finally:
        verifier.close()
    twin = Result(**results[0].__dict__)  # equal, but not the message that was verified
    assert twin == results[0] and verdicts.take(twin) is None
    assert verdicts.take(results[0]) is True


async def test_frames_left_to_the_inline_check() -> None:
    metrics = Metrics()
    verifier = SignatureVerifier(metrics)
    verdicts = Verdicts()
    # Below MIN_BATCH: the hand-off would cost more than it saves.
    await verifier.verify_frame([_result(n) for n in range(MIN_BATCH - 1)], verdicts)
    # Where the extension is unavailable (disabled here), and once closed.
    verifier.enabled = False
    await verifier.verify_frame([_result(n) for n in range(MIN_BATCH)], verdicts)
    verifier.enabled = ed25519_batch.AVAILABLE
    verifier.close()
    await verifier.verify_frame([_result(n) for n in range(MIN_BATCH)], verdicts)
    assert len(verdicts) == 0 and not metrics.signatures_verified


def test_a_receipts_signed_item_and_its_verdict() -> None:
    msg = _result(3)
    receipt, signature = dict(msg.receipt), dict(msg.signature)
    item = signed_item(receipt, signature)
    assert item is not None
    if ed25519_batch.AVAILABLE:
        assert ed25519_batch.verify_many([item]) == [True]
    assert keys.verify_hex(item[0].hex(), item[1].hex(), item[2])
    assert verify_receipt(receipt, signature, True) == []
    # A verdict given is trusted for the signature; the shape checks still run.
    assert verify_receipt(receipt, signature, False) == [
        "signature does not verify over the receipt's canonical bytes"
    ]
    assert verify_receipt({**receipt, "units": -1}, signature, True)[0] == "units is negative"
    # What cannot go in a batch is left to the inline check, which names the fault.
    assert signed_item(receipt, {**signature, "sig": "zz"}) is None
    assert signed_item({**receipt, "public_key": "A" * 64}, signature) is None
    assert signed_item({**receipt, "units": 1.5}, signature) is None  # no canonical form
    assert signed_item([], signature) is None
