"""The daemon's identity: its Ed25519 key file (mode 0600), hence its miner id.

Each daemon has its own key file, so one miner API key can serve many hosts, each with
its own miner id; all of them are paid at the API key's address.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.keys import (
    PrivateKey,
    address_of,
    generate_private_key,
    load_key_file,
    load_or_create_key_file,
    miner_id_from_public_key,
    public_key_bytes,
    public_key_hex,
    save_key_file,
    sign_hex,
)
from protocol.messages import auth_payload


@dataclass(frozen=True)
class Identity:
    private_key: PrivateKey
    public_key: str  # lowercase hex of the raw 32 bytes
    miner_id: str
    key_address: str  # the key's own address (not where the miner is paid)
    path: Path

    def sign_nonce(self, nonce: str) -> str:
        return sign_hex(self.private_key, auth_payload(nonce))


def _identity(private_key: PrivateKey, path: Path) -> Identity:
    return Identity(
        private_key=private_key,
        public_key=public_key_hex(private_key),
        miner_id=miner_id_from_public_key(public_key_bytes(private_key)),
        key_address=address_of(private_key),
        path=path,
    )


def load_identity(path: str | Path, *, create: bool = True) -> Identity:
    """The key file at ``path``; made (0600) when missing and ``create`` is set."""
    target = Path(path)
    key = load_or_create_key_file(target) if create else load_key_file(target)
    return _identity(key, target)


def new_identity(path: str | Path, *, overwrite: bool = False) -> Identity:
    """Write a fresh key file; refuses to replace an existing one unless asked."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"key file {target} already exists (keeping it)")
    key = generate_private_key()
    save_key_file(target, key)
    return _identity(key, target)
