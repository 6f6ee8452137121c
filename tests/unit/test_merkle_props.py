"""Hypothesis: every proof of every tree verifies, and any flipped bit breaks it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chain.merkle import merkle_proof, merkle_root, verify_proof

entries = st.lists(
    st.fixed_dictionaries(
        {"transfer_id": st.text(min_size=1, max_size=12), "amount_uait": st.integers(0, 10**12)}
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(entries, st.data())
def test_proofs_verify_and_any_flipped_bit_fails(leaves: list[dict[str, Any]], data: Any) -> None:
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle_proof(leaves, index)
    assert verify_proof(leaves[index], proof, root)
    if not proof:
        return
    step = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 255))
    raw = bytearray(bytes.fromhex(proof[step]["hash"]))
    raw[bit // 8] ^= 1 << (bit % 8)
    bad = [dict(s) for s in proof]
    bad[step]["hash"] = raw.hex()
    assert not verify_proof(leaves[index], bad, root)


@settings(max_examples=60, deadline=None)
@given(entries, st.data())
def test_any_changed_entry_changes_the_root(leaves: list[dict[str, Any]], data: Any) -> None:
    index = data.draw(st.integers(0, len(leaves) - 1))
    changed = [dict(e) for e in leaves]
    changed[index]["amount_uait"] += data.draw(st.integers(1, 10**6))
    assert merkle_root(changed) != merkle_root(leaves)
    # Dropping the last entry changes it too (odd nodes are promoted, not duplicated).
    if len(leaves) > 1:
        assert merkle_root(leaves[:-1]) != merkle_root(leaves)
