"""Ed25519 keys, addresses, miner ids, signatures and key files.

Keys are cryptography's `Ed25519PrivateKey`; signing and verifying go through libsodium
(PyNaCl), which does both in about half of OpenSSL's time here (docs/benchmarks.md, round
8) and refuses the non-canonical and small-order keys and points that OpenSSL lets by. The
signatures are the same bytes (Ed25519 is deterministic), so either library checks the
other's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

PrivateKey = Ed25519PrivateKey
SignedItem = tuple[bytes, bytes, bytes]  # (raw public key, raw signature, signed bytes)

ADDRESS_PREFIX = "ait1"
MINER_ID_PREFIX = "miner_"
_ADDRESS_RE = re.compile(r"^ait1[0-9a-f]{40}$")
_HEX_RE = re.compile(r"^[0-9a-f]*$")


class KeyFileError(ValueError):
    """A key file is missing, unreadable or malformed."""


def generate_private_key() -> PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_bytes(private_key: PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_hex(private_key: PrivateKey) -> str:
    return _signing_material(private_key)[1]


# A miner signs every receipt with the same key: its public key (derived through OpenSSL
# each call, ~1.5 us) and libsodium's secret are made once a key object. Keys hash by
# identity; the few a process holds stay alive here, as their owners keep them anyway.
@functools.lru_cache(maxsize=64)
def _signing_material(private_key: PrivateKey) -> tuple[bytes, str]:
    """libsodium's secret key (the seed followed by the public key) and the public key's
    hex."""
    public = public_key_bytes(private_key)
    return private_key.private_bytes_raw() + public, public.hex()


def private_key_hex(private_key: PrivateKey) -> str:
    return private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def private_key_from_hex(text: str) -> PrivateKey:
    raw = _strict_hex(text, 32)
    if raw is None:
        raise KeyFileError("private key must be 64 lowercase hex characters")
    return Ed25519PrivateKey.from_private_bytes(raw)


def address_from_public_key(public_key: bytes) -> str:
    return ADDRESS_PREFIX + hashlib.sha256(public_key).digest()[:20].hex()


def miner_id_from_public_key(public_key: bytes) -> str:
    return MINER_ID_PREFIX + hashlib.sha256(public_key).hexdigest()[:12]


def address_of(private_key: PrivateKey) -> str:
    return address_from_public_key(public_key_bytes(private_key))


def is_address(text: object) -> bool:
    return isinstance(text, str) and _ADDRESS_RE.fullmatch(text) is not None


def _strict_hex(text: object, length: int) -> bytes | None:
    if not isinstance(text, str) or len(text) != 2 * length or not _HEX_RE.fullmatch(text):
        return None
    return bytes.fromhex(text)


def sign_hex(private_key: PrivateKey, data: bytes) -> str:
    secret = _signing_material(private_key)[0]
    return nacl.bindings.crypto_sign(data, secret)[: nacl.bindings.crypto_sign_BYTES].hex()


def raw_key_and_signature(
    public_key_hex: object, signature_hex: object
) -> tuple[bytes, bytes] | None:
    """The raw 32-byte key and 64-byte signature; None where either is not strict hex."""
    public_raw = _strict_hex(public_key_hex, 32)
    signature_raw = _strict_hex(signature_hex, 64)
    if public_raw is None or signature_raw is None:
        return None
    return public_raw, signature_raw


def verify_hex(public_key_hex: object, signature_hex: object, data: bytes) -> bool:
    """True only for a valid signature; any malformed input is simply invalid."""
    raw = raw_key_and_signature(public_key_hex, signature_hex)
    if raw is None:
        return False
    public_raw, signature_raw = raw
    try:
        nacl.bindings.crypto_sign_open(signature_raw + data, public_raw)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def key_file_document(private_key: PrivateKey) -> dict[str, str]:
    return {
        "alg": "Ed25519",
        "private_key": private_key_hex(private_key),
        "public_key": public_key_hex(private_key),
        "address": address_of(private_key),
    }


def save_key_file(path: str | Path, private_key: PrivateKey) -> None:
    """Write a key file readable by its owner only (mode 0600), creating parent dirs."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(key_file_document(private_key), indent=2) + "\n"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    os.chmod(target, 0o600)


def load_key_file(path: str | Path) -> PrivateKey:
    target = Path(path)
    try:
        document = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {target} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"key file {target} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("alg") != "Ed25519":
        raise KeyFileError(f"key file {target} is not an Ed25519 key file")
    private_key = private_key_from_hex(document.get("private_key", ""))
    if document.get("public_key") not in (None, public_key_hex(private_key)):
        raise KeyFileError(f"key file {target}: public key does not match the private key")
    return private_key


def load_or_create_key_file(path: str | Path) -> PrivateKey:
    target = Path(path)
    if target.exists():
        return load_key_file(target)
    private_key = generate_private_key()
    save_key_file(target, private_key)
    return private_key
