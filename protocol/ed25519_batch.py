"""Ed25519 verification of many signatures in one call that lets go of the GIL once.

A verification costs ~50 µs of libsodium. PyNaCl releases the GIL for each call, but a
thread that verifies one signature at a time must win the GIL back between calls, and
on a busy event loop those hand-offs cost the loop more than verifying inline (round 9
and round 28 of docs/benchmarks.md: a thread verifying 35-signature batches one call at
a time took 40% of a spinning loop's turns; the same batches in one call, 3.6%). The C
extension ``protocol._ed25519_batch`` runs libsodium's ``crypto_sign_verify_detached``
over a whole list with the GIL released once: the function PyNaCl bundles, found by
name in PyNaCl's loaded library, so both paths verify with the same code.

The extension is optional (setup.py): where it was not compiled, or PyNaCl's library
does not export the function, ``AVAILABLE`` is false, ``UNAVAILABLE_REASON`` says why,
and callers verify on their own thread with ``protocol.keys.verify_hex``.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Sequence
from types import ModuleType

from protocol.keys import SignedItem


def _load() -> tuple[ModuleType | None, int, str]:
    try:
        from protocol import _ed25519_batch
    except ImportError as exc:
        return None, 0, f"the C extension is not built ({exc})"
    try:
        path = importlib.import_module("nacl._sodium").__file__  # PyNaCl's cffi library
        sodium = ctypes.CDLL(path)  # already loaded: dlopen hands back the same handle
        function = sodium.crypto_sign_verify_detached
    except (ImportError, OSError, AttributeError, TypeError) as exc:
        return None, 0, f"PyNaCl's library does not export crypto_sign_verify_detached ({exc})"
    address = ctypes.cast(function, ctypes.c_void_p).value
    if not address:
        return None, 0, "crypto_sign_verify_detached has no address"
    return _ed25519_batch, address, ""


_MODULE, _ADDRESS, UNAVAILABLE_REASON = _load()
AVAILABLE = _MODULE is not None


def verify_many(items: Sequence[SignedItem]) -> list[bool]:
    """True for each (32-byte public key, 64-byte signature, message) that verifies.

    Runs without the GIL from the first verification to the last. Raises TypeError or
    ValueError for an item of the wrong shape (callers build items from hex they have
    checked), RuntimeError where the extension is unavailable."""
    if _MODULE is None:
        raise RuntimeError(f"batch verification is unavailable: {UNAVAILABLE_REASON}")
    verdicts: bytes = _MODULE.verify_many(_ADDRESS, items)
    return [v == 1 for v in verdicts]
