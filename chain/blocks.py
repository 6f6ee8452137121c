"""Blocks of the per-chain log: settled transfers (and the receipts they settle), sealed
and signed by the coordinator (pure).

A block is a JSON object::

    {"header":    {"version", "chain_id", "height", "prev_hash", "merkle_root",
                   "created_at", "entry_count"},
     "entries":   [entry, ...],
     "hash":      sha256(canonical_bytes(header)) hex,
     "signature": {"alg": "Ed25519", "public_key": hex, "sig": hex over canonical header}}

An entry is one ledger transfer, amounts in integer micro-AIT::

    {"transfer_id", "kind", "chain_id", "job_id" (str or null), "amount_uait", "created_at",
     "debit":  {"address", "kind"},      # money leaves this account
     "credit": {"address", "kind"},      # and arrives here
     "receipt": {...}, "receipt_signature": {...}}   # only on pay:{job_id} transfers

The header commits to the entries through the Merkle root (chain.merkle), and to the
previous block through prev_hash, so signing the header signs the whole log up to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chain.merkle import merkle_root
from protocol.canonical import canonical_bytes, sha256_hex
from protocol.keys import PrivateKey, public_key_hex, sign_hex, verify_hex
from protocol.timefmt import iso_ms

BLOCK_VERSION = 1
SIGNATURE_ALG = "Ed25519"
GENESIS_PREV_HASH = "0" * 64
MAX_ENTRIES_PER_BLOCK = 1000  # bounded blocks; the sealer seals the rest next round

HEADER_FIELDS: dict[str, type] = {
    "version": int,
    "chain_id": str,
    "height": int,
    "prev_hash": str,
    "merkle_root": str,
    "created_at": str,
    "entry_count": int,
}

# Transfer kinds, which are also the prefixes of chain.ledger's deterministic ids
# (`pay:{job_id}`, `mint:{uuid}`); the job kinds name the job they belong to.
JOB_TRANSFER_KINDS = ("hold", "pay", "fee", "refund", "void")
# The transfer that pays a miner carries the signed receipt it settles.
RECEIPT_TRANSFER_KIND = "pay"


def job_id_of_transfer(transfer_id: str) -> str | None:
    """`pay:job_x` -> `job_x` (and a hold's top-up `hold:job_x:2` -> `job_x`); None for
    transfers that belong to no job (mints)."""
    prefix, sep, rest = transfer_id.partition(":")
    job_id = rest.partition(":")[0]
    if sep and prefix in JOB_TRANSFER_KINDS and job_id:
        return job_id
    return None


def kind_of_transfer(transfer_id: str) -> str:
    """The kind a deterministic transfer id names (`pay:job_x` -> `pay`)."""
    return transfer_id.partition(":")[0]


def transfer_entry(
    *,
    transfer_id: str,
    chain_id: str,
    debit_address: str,
    debit_kind: str,
    credit_address: str,
    credit_kind: str,
    amount_uait: int,
    created_at_ms: int,
    kind: str | None = None,
    job_id: str | None = None,
    receipt: Mapping[str, Any] | None = None,
    receipt_signature: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The block entry of one settled transfer (and its receipt, for a pay transfer)."""
    entry: dict[str, Any] = {
        "transfer_id": transfer_id,
        "kind": kind if kind is not None else kind_of_transfer(transfer_id),
        "chain_id": chain_id,
        "job_id": job_id if job_id is not None else job_id_of_transfer(transfer_id),
        "amount_uait": amount_uait,
        "created_at": iso_ms(created_at_ms),
        "debit": {"address": debit_address, "kind": debit_kind},
        "credit": {"address": credit_address, "kind": credit_kind},
    }
    if (receipt is None) != (receipt_signature is None):
        raise ValueError("receipt and receipt_signature go together")
    if receipt is not None and receipt_signature is not None:
        entry["receipt"] = dict(receipt)
        entry["receipt_signature"] = dict(receipt_signature)
    return entry


def block_hash(header: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the header's canonical bytes; the next block's prev_hash."""
    return sha256_hex(canonical_bytes(dict(header)))


def seal_block(
    *,
    chain_id: str,
    height: int,
    prev_hash: str,
    entries: Sequence[Mapping[str, Any]],
    created_at_ms: int,
    private_key: PrivateKey,
) -> dict[str, Any]:
    """Build and sign one block; raises ValueError on an impossible request."""
    entry_list = [dict(entry) for entry in entries]
    sealed = seal_header(
        chain_id=chain_id,
        height=height,
        prev_hash=prev_hash,
        merkle_root=merkle_root(entry_list),
        entry_count=len(entry_list),
        created_at_ms=created_at_ms,
        private_key=private_key,
    )
    return {**sealed, "entries": entry_list}


def seal_header(
    *,
    chain_id: str,
    height: int,
    prev_hash: str,
    merkle_root: str,
    entry_count: int,
    created_at_ms: int,
    private_key: PrivateKey,
) -> dict[str, Any]:
    """A block without its entries: header, hash and signature, for entries whose Merkle
    root the caller has (the sealer, which keeps its entries as canonical bytes and writes
    the block's body from them); raises ValueError on an impossible request."""
    if height < 0:
        raise ValueError("height must be >= 0")
    if height == 0 and prev_hash != GENESIS_PREV_HASH:
        raise ValueError("the genesis block's prev_hash is 64 zeros")
    if len(prev_hash) != 64:
        raise ValueError("prev_hash must be 64 hex characters")
    if entry_count < 0:
        raise ValueError("entry_count must be >= 0")
    if entry_count > MAX_ENTRIES_PER_BLOCK:
        raise ValueError(f"a block holds at most {MAX_ENTRIES_PER_BLOCK} entries")
    header: dict[str, Any] = {
        "version": BLOCK_VERSION,
        "chain_id": chain_id,
        "height": height,
        "prev_hash": prev_hash,
        "merkle_root": merkle_root,
        "created_at": iso_ms(created_at_ms),
        "entry_count": entry_count,
    }
    return {
        "header": header,
        "hash": block_hash(header),
        "signature": sign_header(private_key, header),
    }


def sign_header(private_key: PrivateKey, header: Mapping[str, Any]) -> dict[str, str]:
    return {
        "alg": SIGNATURE_ALG,
        "public_key": public_key_hex(private_key),
        "sig": sign_hex(private_key, canonical_bytes(dict(header))),
    }


def verify_header_signature(
    header: Mapping[str, Any], signature: object, public_key_hex_expected: str
) -> str | None:
    """None when the header is signed by the expected key, else what is wrong."""
    if not isinstance(signature, Mapping):
        return "signature is not a JSON object"
    if signature.get("alg") != SIGNATURE_ALG:
        return "signature alg is not Ed25519"
    if signature.get("public_key") != public_key_hex_expected:
        return "signed by another key than the coordinator's"
    if not verify_hex(public_key_hex_expected, signature.get("sig"), canonical_bytes(dict(header))):
        return "signature does not verify over the header's canonical bytes"
    return None
