"""The coordinator's own Ed25519 key (signs blocks), kept under the data dir."""

from __future__ import annotations

from pathlib import Path

from protocol.keys import PrivateKey, load_or_create_key_file


def load_or_create(path: Path) -> PrivateKey:
    """The key at `path`, made (mode 0600) on first use."""
    return load_or_create_key_file(path)
