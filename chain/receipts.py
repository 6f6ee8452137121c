"""Receipts: what a miner signs when it returns a result, verifiable offline by anyone.

A receipt is a flat JSON object of strings and integers (no floats), signed by the
miner's Ed25519 key over its RFC 8785 canonical bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from protocol.canonical import CanonicalError, canonical_bytes
from protocol.keys import (
    PrivateKey,
    SignedItem,
    is_address,
    miner_id_from_public_key,
    public_key_hex,
    raw_key_and_signature,
    sign_hex,
    verify_hex,
)

RECEIPT_VERSION = 1
SIGNATURE_ALG = "Ed25519"

# Field name -> Python type every receipt carries.
RECEIPT_FIELDS: dict[str, type] = {
    "version": int,
    "job_id": str,
    "chain_id": str,
    "miner_id": str,
    "miner_address": str,
    "client_address": str,
    "model": str,
    "input_sha256": str,
    "output_sha256": str,
    "units": int,
    "unit": str,
    "price_uait_per_unit": int,
    "cost_uait": int,
    "attempt": int,
    "started_at": str,
    "completed_at": str,
    "public_key": str,
}


def build_receipt(
    *,
    job_id: str,
    chain_id: str,
    miner_address: str,
    client_address: str,
    model: str,
    input_sha256: str,
    output_sha256: str,
    units: int,
    unit: str,
    price_uait_per_unit: int,
    attempt: int,
    started_at: str,
    completed_at: str,
    public_key: str,
) -> dict[str, Any]:
    """The receipt a miner signs; `miner_id` and `cost_uait` are derived, never chosen."""
    receipt: dict[str, Any] = {
        "version": RECEIPT_VERSION,
        "job_id": job_id,
        "chain_id": chain_id,
        "miner_id": miner_id_from_public_key(bytes.fromhex(public_key)),
        "miner_address": miner_address,
        "client_address": client_address,
        "model": model,
        "input_sha256": input_sha256,
        "output_sha256": output_sha256,
        "units": units,
        "unit": unit,
        "price_uait_per_unit": price_uait_per_unit,
        "cost_uait": units * price_uait_per_unit,
        "attempt": attempt,
        "started_at": started_at,
        "completed_at": completed_at,
        "public_key": public_key,
    }
    problems = check_receipt_fields(receipt)
    if problems:
        raise ValueError("; ".join(problems))
    return receipt


def sign_receipt(private_key: PrivateKey, receipt: Mapping[str, Any]) -> dict[str, str]:
    if receipt.get("public_key") != public_key_hex(private_key):
        raise ValueError("receipt public_key is not the signing key's public key")
    return {
        "alg": SIGNATURE_ALG,
        "public_key": public_key_hex(private_key),
        "sig": sign_hex(private_key, canonical_bytes(dict(receipt))),
    }


_LOWER_HEX = re.compile("[0-9a-f]*")


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and bool(_LOWER_HEX.fullmatch(value))


def check_receipt_fields(receipt: Mapping[str, Any]) -> list[str]:
    """Shape checks; each string names one failed check."""
    problems: list[str] = []
    for name, kind in RECEIPT_FIELDS.items():
        value = receipt.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"field {name} is missing or not a {kind.__name__}")
    if problems:
        return problems
    if receipt["version"] != RECEIPT_VERSION:
        problems.append(f"unknown receipt version {receipt['version']}")
    for name in ("input_sha256", "output_sha256"):
        if not _is_hex(receipt[name], 64):
            problems.append(f"{name} is not 64 lowercase hex characters")
    if not _is_hex(receipt["public_key"], 64):
        problems.append("public_key is not 64 lowercase hex characters")
    elif receipt["miner_id"] != miner_id_from_public_key(bytes.fromhex(receipt["public_key"])):
        problems.append("miner_id does not belong to public_key")
    for name in ("miner_address", "client_address"):
        if not is_address(receipt[name]):
            problems.append(f"{name} is not an ait1 address")
    for name in ("units", "price_uait_per_unit", "attempt"):
        if receipt[name] < 0:
            problems.append(f"{name} is negative")
    if receipt["cost_uait"] != receipt["units"] * receipt["price_uait_per_unit"]:
        problems.append("cost_uait is not units x price_uait_per_unit")
    return problems


def signed_item(receipt: object, signature: object) -> SignedItem | None:
    """What ``verify_receipt`` checks the signature of, for verifying it elsewhere
    (``protocol.ed25519_batch``): the raw key, the raw signature, the canonical bytes.
    None where any of them cannot be had; ``verify_receipt`` then says which."""
    if not isinstance(receipt, Mapping) or not isinstance(signature, Mapping):
        return None
    raw = raw_key_and_signature(receipt.get("public_key"), signature.get("sig"))
    if raw is None:
        return None
    try:
        message = canonical_bytes(dict(receipt))
    except CanonicalError:
        return None
    return raw[0], raw[1], message


def verify_receipt(
    receipt: object, signature: object, signature_valid: bool | None = None
) -> list[str]:
    """Every failed check, by name; an empty list means the receipt is valid and signed.

    ``signature_valid`` is the verdict on ``signed_item(receipt, signature)`` where the
    caller verified it already (in a batch, off the event loop); None verifies here."""
    if not isinstance(receipt, Mapping):
        return ["receipt is not a JSON object"]
    if not isinstance(signature, Mapping):
        return ["signature is not a JSON object"]
    problems = check_receipt_fields(receipt)
    if signature.get("alg") != SIGNATURE_ALG:
        problems.append("signature alg is not Ed25519")
    if signature.get("public_key") != receipt.get("public_key"):
        problems.append("signature public_key differs from the receipt's public_key")
    if signature_valid is None:
        try:
            message = canonical_bytes(dict(receipt))
        except CanonicalError as exc:
            return [*problems, f"receipt has no canonical form: {exc}"]
        signature_valid = verify_hex(receipt.get("public_key"), signature.get("sig"), message)
    if not signature_valid:
        problems.append("signature does not verify over the receipt's canonical bytes")
    return problems
