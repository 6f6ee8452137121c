"""Identifiers, API keys and nonces."""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "ait_"


def new_job_id() -> str:
    return "job_" + secrets.token_hex(10)


def new_file_id() -> str:
    return "file_" + secrets.token_hex(10)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    # API keys carry 256 bits of entropy, so a plain SHA-256 is enough (no need for a slow KDF).
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_nonce() -> str:
    return secrets.token_hex(32)
