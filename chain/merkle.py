"""Merkle trees over block entries, with inclusion proofs (pure).

Hashing (SHA-256, RFC 6962 style domain separation so a leaf can never be passed off as
an inner node, which defeats second-preimage forgeries):

    leaf = sha256(0x00 || canonical_bytes(entry))
    node = sha256(0x01 || left || right)

An odd node at the end of a level is *promoted* unchanged to the next level (as in
RFC 6962), not duplicated: duplication lets two different entry lists share a root
(Bitcoin's CVE-2012-2459), promotion does not. The root of an empty list is
sha256(b"") so an empty block still has a well-defined root.

A proof is the list of sibling hashes from the leaf up to the root, each tagged with the
side the sibling sits on; a promoted level contributes no step.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from protocol.canonical import CanonicalError, canonical_bytes

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
MAX_PROOF_STEPS = 64  # 2**64 leaves: any longer proof is malformed

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

ProofStep = dict[str, str]


def leaf_hash(entry: Any) -> bytes:
    """The 32-byte leaf hash of one entry (any canonicalisable JSON value)."""
    return leaf_hash_of_bytes(canonical_bytes(entry))


def leaf_hash_of_bytes(canonical: bytes) -> bytes:
    """`leaf_hash` of the entry whose canonical bytes these are."""
    return hashlib.sha256(LEAF_PREFIX + canonical).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    upper = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        upper.append(level[-1])  # promote the odd node
    return upper


def merkle_root(leaves: Sequence[Any]) -> str:
    """Hex Merkle root of the entries, in order."""
    return root_of_leaf_hashes([leaf_hash(entry) for entry in leaves])


def root_of_leaf_hashes(leaf_hashes: Sequence[bytes]) -> str:
    """Hex Merkle root over already computed leaf hashes (`leaf_hash` of each entry)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        level = _next_level(level)
    return level[0].hex()


def merkle_proof(leaves: Sequence[Any], index: int) -> list[ProofStep]:
    """Inclusion proof of ``leaves[index]``: sibling hashes from the leaf to the root."""
    return MerkleTree(leaves).proof(index)


class MerkleTree:
    """Every level of the tree over `leaves`, hashed once, for many proofs: a proof costs a
    step a level instead of re-hashing every entry (a block's 1,000 leaves: ~5 ms)."""

    def __init__(self, leaves: Sequence[Any]) -> None:
        level = [leaf_hash(entry) for entry in leaves]
        self.levels = [level]
        while len(level) > 1:
            level = _next_level(level)
            self.levels.append(level)

    def proof(self, index: int) -> list[ProofStep]:
        """Inclusion proof of leaf `index`: sibling hashes from the leaf to the root."""
        size = len(self.levels[0])
        if not 0 <= index < size:
            raise IndexError(f"leaf index {index} out of range for {size} leaves")
        proof: list[ProofStep] = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                side = "left" if sibling < index else "right"
                proof.append({"side": side, "hash": level[sibling].hex()})
            index //= 2
        return proof


def verify_proof(leaf_entry: Any, proof: Sequence[Any], root: str) -> bool:
    """True only if ``leaf_entry`` with ``proof`` hashes up to ``root``; never raises."""
    if not isinstance(root, str) or not _HEX64.fullmatch(root):
        return False
    if not isinstance(proof, Sequence) or len(proof) > MAX_PROOF_STEPS:
        return False
    try:
        current = leaf_hash(leaf_entry)
    except CanonicalError:
        return False
    for step in proof:
        if not isinstance(step, Mapping):
            return False
        sibling_hex = step.get("hash")
        if not isinstance(sibling_hex, str) or not _HEX64.fullmatch(sibling_hex):
            return False
        sibling = bytes.fromhex(sibling_hex)
        side = step.get("side")
        if side == "left":
            current = node_hash(sibling, current)
        elif side == "right":
            current = node_hash(current, sibling)
        else:
            return False
    return current.hex() == root
