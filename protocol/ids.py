"""Identifiers, API keys and nonces."""

from __future__ import annotations

import hashlib
import secrets
import threading

API_KEY_PREFIX = "ait_"


_SEQ_LOCK = threading.Lock()
_last_ms, _seq = -1, 0


def new_job_id(at_ms: int) -> str:
    """``job_`` + 24 hex digits: the creation time (Unix ms, 12 digits), a sequence within
    that millisecond (4 digits) and 32 random bits. Jobs are listed newest first with ties
    on ``created_at`` broken by id, so ids one process makes in the same millisecond (a
    batch, a quick client) keep the order they were submitted in; the random part keeps
    ids of different processes apart."""
    global _last_ms, _seq
    with _SEQ_LOCK:
        _seq = _seq + 1 if at_ms == _last_ms else 0
        _last_ms = at_ms
        seq = min(_seq, 0xFFFF)
    return f"job_{at_ms & 0xFFFF_FFFF_FFFF:012x}{seq:04x}{secrets.token_hex(4)}"


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
