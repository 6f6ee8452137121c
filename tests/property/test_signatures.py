"""Any byte flipped in a signed receipt, or in its signature, breaks verification."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chain.receipts import build_receipt, sign_receipt, verify_receipt
from protocol import keys
from protocol.canonical import canonical_bytes

MINER_KEY = keys.generate_private_key()
CLIENT = keys.address_of(keys.generate_private_key())


def _receipt(units: int, model: str) -> dict[str, Any]:
    return build_receipt(
        job_id="job_" + "ab" * 10,
        chain_id="ait-devnet",
        miner_address=keys.address_of(MINER_KEY),
        client_address=CLIENT,
        model=model,
        input_sha256="0" * 64,
        output_sha256="1" * 64,
        units=units,
        unit="byte",
        price_uait_per_unit=3,
        attempt=1,
        started_at="2026-01-01T00:00:00.000Z",
        completed_at="2026-01-01T00:00:01.000Z",
        public_key=keys.public_key_hex(MINER_KEY),
    )


@settings(max_examples=150, deadline=None)
@given(units=st.integers(0, 10**9), model=st.text(min_size=1, max_size=20), data=st.data())
def test_any_flipped_byte_breaks_the_signature(units: int, model: str, data: st.DataObject) -> None:
    receipt = _receipt(units, model)
    signature = sign_receipt(MINER_KEY, receipt)
    assert verify_receipt(receipt, signature) == []
    raw = bytearray(canonical_bytes(receipt))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    message = bytes(raw)
    assert not keys.verify_hex(signature["public_key"], signature["sig"], message)
    sig = bytearray.fromhex(signature["sig"])
    sig[data.draw(st.integers(0, 63))] ^= data.draw(st.integers(1, 255))
    assert verify_receipt(receipt, {**signature, "sig": sig.hex()}) != []


def test_changed_field_and_foreign_key_are_named() -> None:
    receipt = _receipt(10, "gpt2")
    signature = sign_receipt(MINER_KEY, receipt)
    assert verify_receipt({**receipt, "units": 11}, signature)
    other = keys.generate_private_key()
    forged = {**receipt, "public_key": keys.public_key_hex(other)}
    problems = verify_receipt(forged, sign_receipt(other, forged))
    assert any("miner_id" in p for p in problems)
    assert verify_receipt(receipt, {}) != []
    assert verify_receipt("x", signature) == ["receipt is not a JSON object"]
