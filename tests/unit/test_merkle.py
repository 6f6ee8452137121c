"""Merkle roots and inclusion proofs: valid proofs verify, any changed byte fails."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from chain.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    merkle_proof,
    merkle_root,
    node_hash,
    verify_proof,
)
from protocol.canonical import canonical_bytes


def _entries(n: int) -> list[dict[str, Any]]:
    return [{"transfer_id": f"mint:{i}", "amount_uait": 1000 + i} for i in range(n)]


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    entry = {"a": 1}
    assert leaf_hash(entry) == hashlib.sha256(b"\x00" + canonical_bytes(entry)).digest()
    left, right = leaf_hash({"a": 1}), leaf_hash({"b": 2})
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    # An inner node's preimage passed off as a leaf does not reproduce the node hash.
    assert leaf_hash((left + right).hex()) != node_hash(left, right)


def test_known_roots() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").hexdigest()
    a, b, c = _entries(3)
    assert merkle_root([a]) == leaf_hash(a).hex()
    ab = node_hash(leaf_hash(a), leaf_hash(b))
    assert merkle_root([a, b]) == ab.hex()
    # The odd third leaf is promoted, not duplicated.
    assert merkle_root([a, b, c]) == node_hash(ab, leaf_hash(c)).hex()
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


def test_order_matters() -> None:
    a, b = _entries(2)
    assert merkle_root([a, b]) != merkle_root([b, a])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33])
def test_every_proof_verifies(n: int) -> None:
    leaves = _entries(n)
    root = merkle_root(leaves)
    for index, entry in enumerate(leaves):
        proof = merkle_proof(leaves, index)
        assert verify_proof(entry, proof, root)
        assert len(proof) <= max(1, (n - 1).bit_length())
        # The proof of one leaf does not prove another.
        other = leaves[(index + 1) % n]
        if n > 1:
            assert not verify_proof(other, proof, root)


def test_one_tree_proves_every_leaf_and_ends_in_the_root() -> None:
    leaves = _entries(13)
    tree = MerkleTree(leaves)
    assert tree.levels[-1] == [bytes.fromhex(merkle_root(leaves))]
    assert [tree.proof(i) for i in range(13)] == [merkle_proof(leaves, i) for i in range(13)]
    with pytest.raises(IndexError):
        tree.proof(13)


def test_proof_fails_when_any_byte_changes() -> None:
    leaves = _entries(6)
    root = merkle_root(leaves)
    index = 3
    entry = leaves[index]
    proof = merkle_proof(leaves, index)
    assert verify_proof(entry, proof, root)
    # Every byte of every sibling hash.
    for step_no, step in enumerate(proof):
        raw = bytearray(bytes.fromhex(step["hash"]))
        for pos in range(len(raw)):
            raw[pos] ^= 0x01
            bad = [dict(s) for s in proof]
            bad[step_no]["hash"] = raw.hex()
            assert not verify_proof(entry, bad, root)
            raw[pos] ^= 0x01
    # Every byte of the root.
    root_raw = bytearray(bytes.fromhex(root))
    for pos in range(len(root_raw)):
        root_raw[pos] ^= 0x80
        assert not verify_proof(entry, proof, root_raw.hex())
        root_raw[pos] ^= 0x80
    # The entry itself: a changed amount or id.
    assert not verify_proof({**entry, "amount_uait": entry["amount_uait"] + 1}, proof, root)
    assert not verify_proof({**entry, "transfer_id": "mint:x"}, proof, root)
    # A swapped side.
    flipped = [dict(s) for s in proof]
    flipped[0]["side"] = "left" if flipped[0]["side"] == "right" else "right"
    assert not verify_proof(entry, flipped, root)
    # A dropped or added step.
    assert not verify_proof(entry, proof[:-1], root)
    assert not verify_proof(entry, [*proof, proof[0]], root)


def test_malformed_proofs_are_invalid_not_errors() -> None:
    leaves = _entries(4)
    root = merkle_root(leaves)
    entry = leaves[0]
    for bad_proof in (
        [{"side": "up", "hash": "00" * 32}],
        [{"side": "left", "hash": "zz"}],
        [{"side": "left"}],
        ["not a mapping"],
        [{"side": "right", "hash": "AB" * 32}],
    ):
        assert not verify_proof(entry, bad_proof, root)
    assert not verify_proof(entry, merkle_proof(leaves, 0), "not-hex")
    assert not verify_proof({"x": 1.5}, merkle_proof(leaves, 0), root)


def test_proof_index_out_of_range() -> None:
    with pytest.raises(IndexError):
        merkle_proof(_entries(2), 2)
    with pytest.raises(IndexError):
        merkle_proof([], 0)
