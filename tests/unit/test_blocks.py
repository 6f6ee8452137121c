"""Sealing blocks: header fields, hash, signature, entries and their Merkle proofs."""

from __future__ import annotations

from typing import Any

import pytest

from chain.blocks import (
    GENESIS_PREV_HASH,
    block_hash,
    job_id_of_transfer,
    kind_of_transfer,
    seal_block,
    seal_header,
    transfer_entry,
    verify_header_signature,
)
from chain.merkle import (
    leaf_hash,
    leaf_hash_of_bytes,
    merkle_proof,
    merkle_root,
    root_of_leaf_hashes,
    verify_proof,
)
from protocol.canonical import canonical_bytes, sha256_hex
from protocol.keys import PrivateKey, address_of, generate_private_key, public_key_hex

ISSUANCE = "ait1" + "0" * 40
T0 = 1_790_000_000_000


def _mint(n: int, address: str) -> dict[str, object]:
    return transfer_entry(
        transfer_id=f"mint:{n}",
        chain_id="ait-devnet",
        debit_address=ISSUANCE,
        debit_kind="issuance",
        credit_address=address,
        credit_kind="available",
        amount_uait=1_000_000 * (n + 1),
        created_at_ms=T0 + n,
    )


def _genesis(key: PrivateKey, entries: list[dict[str, object]]) -> dict[str, Any]:
    return seal_block(
        chain_id="ait-devnet",
        height=0,
        prev_hash=GENESIS_PREV_HASH,
        entries=entries,
        created_at_ms=T0,
        private_key=key,
    )


def test_transfer_entry_shape() -> None:
    entry = _mint(0, "ait1" + "a" * 40)
    assert entry == {
        "transfer_id": "mint:0",
        "kind": "mint",
        "chain_id": "ait-devnet",
        "job_id": None,
        "amount_uait": 1_000_000,
        "created_at": "2026-09-21T14:13:20.000Z",
        "debit": {"address": ISSUANCE, "kind": "issuance"},
        "credit": {"address": "ait1" + "a" * 40, "kind": "available"},
    }
    hold = transfer_entry(
        transfer_id="hold:job_1",
        chain_id="c",
        debit_address="a",
        debit_kind="available",
        credit_address="a",
        credit_kind="escrow",
        amount_uait=5,
        created_at_ms=T0,
    )
    assert hold["job_id"] == "job_1"
    with pytest.raises(ValueError, match="go together"):
        transfer_entry(
            transfer_id="pay:job_1",
            chain_id="c",
            debit_address="a",
            debit_kind="escrow",
            credit_address="b",
            credit_kind="available",
            amount_uait=5,
            created_at_ms=T0,
            receipt={"job_id": "job_1"},
        )


def test_transfer_ids_map_to_jobs() -> None:
    assert job_id_of_transfer("pay:job_abc") == "job_abc"
    assert job_id_of_transfer("refund:job_abc") == "job_abc"
    assert job_id_of_transfer("hold:job_abc:2") == "job_abc"  # an escrow top-up
    assert kind_of_transfer("hold:job_abc:2") == "hold"
    assert job_id_of_transfer("mint:1234") is None
    assert job_id_of_transfer("pay:") is None
    assert job_id_of_transfer("nonsense") is None
    assert kind_of_transfer("pay:job_abc") == "pay"
    assert kind_of_transfer("mint:1") == "mint"


def test_seal_genesis_and_next_block() -> None:
    key = generate_private_key()
    address = address_of(key)
    entries = [_mint(i, address) for i in range(3)]
    genesis = _genesis(key, entries)
    header = genesis["header"]
    assert header == {
        "version": 1,
        "chain_id": "ait-devnet",
        "height": 0,
        "prev_hash": "0" * 64,
        "merkle_root": merkle_root(entries),
        "created_at": "2026-09-21T14:13:20.000Z",
        "entry_count": 3,
    }
    assert genesis["hash"] == block_hash(header) == sha256_hex(canonical_bytes(header))
    assert genesis["signature"]["alg"] == "Ed25519"
    assert genesis["signature"]["public_key"] == public_key_hex(key)
    assert verify_header_signature(header, genesis["signature"], public_key_hex(key)) is None
    # Each entry is provably in the block.
    for index, entry in enumerate(genesis["entries"]):
        assert verify_proof(entry, merkle_proof(genesis["entries"], index), header["merkle_root"])

    second = seal_block(
        chain_id="ait-devnet",
        height=1,
        prev_hash=genesis["hash"],
        entries=[_mint(3, address)],
        created_at_ms=T0 + 1000,
        private_key=key,
    )
    assert second["header"]["prev_hash"] == genesis["hash"]
    assert second["hash"] != genesis["hash"]


def test_a_header_sealed_over_leaf_hashes_is_the_blocks_own() -> None:
    # The sealer keeps entries as canonical bytes and seals the header over their hashes.
    key = generate_private_key()
    entries = [_mint(i, address_of(key)) for i in range(5)]
    block = _genesis(key, entries)
    leaves = [leaf_hash_of_bytes(canonical_bytes(entry)) for entry in entries]
    assert leaves == [leaf_hash(entry) for entry in entries]
    header_only = seal_header(
        chain_id="ait-devnet",
        height=0,
        prev_hash=GENESIS_PREV_HASH,
        merkle_root=root_of_leaf_hashes(leaves),
        entry_count=len(entries),
        created_at_ms=T0,
        private_key=key,
    )
    assert {**header_only, "entries": entries} == block
    with pytest.raises(ValueError, match="at most"):
        seal_header(
            chain_id="ait-devnet",
            height=1,
            prev_hash=block["hash"],
            merkle_root=root_of_leaf_hashes(leaves),
            entry_count=1001,
            created_at_ms=T0,
            private_key=key,
        )


def test_header_signature_rejects_changes_and_other_keys() -> None:
    key, other = generate_private_key(), generate_private_key()
    block = _genesis(key, [])
    assert block["header"]["entry_count"] == 0
    edited = {**block["header"], "created_at": "2026-09-21T14:13:20.001Z"}
    assert "does not verify" in str(
        verify_header_signature(edited, block["signature"], public_key_hex(key))
    )
    assert "another key" in str(
        verify_header_signature(block["header"], block["signature"], public_key_hex(other))
    )
    assert "not a JSON object" in str(verify_header_signature(block["header"], None, "00"))


def test_seal_refuses_impossible_blocks() -> None:
    key = generate_private_key()
    with pytest.raises(ValueError, match="genesis"):
        seal_block(
            chain_id="c",
            height=0,
            prev_hash="1" * 64,
            entries=[],
            created_at_ms=T0,
            private_key=key,
        )
    with pytest.raises(ValueError, match=">= 0"):
        seal_block(
            chain_id="c",
            height=-1,
            prev_hash="1" * 64,
            entries=[],
            created_at_ms=T0,
            private_key=key,
        )
    with pytest.raises(ValueError, match="64 hex"):
        seal_block(
            chain_id="c",
            height=1,
            prev_hash="ab",
            entries=[],
            created_at_ms=T0,
            private_key=key,
        )
    with pytest.raises(ValueError, match="at most 1000 entries"):
        seal_block(
            chain_id="c",
            height=1,
            prev_hash="1" * 64,
            entries=[_mint(i, ISSUANCE) for i in range(1001)],
            created_at_ms=T0,
            private_key=key,
        )
