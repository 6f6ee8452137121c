"""API keys: created, listed, revoked; looked up by hash on every request (so a key made
by `coordinator keys create` against a running server's database works at once)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db import schema
from coordinator.db.database import Database
from coordinator.settings import ROLES
from protocol.ids import hash_api_key, new_api_key, new_key_id
from protocol.keys import address_of, generate_private_key, is_address, save_key_file
from protocol.timefmt import now_ms

keys = schema.api_keys
MAX_NAME = 200
# Built once: every request runs it, and building a statement (and its cache key) costs
# more than executing it (docs/benchmarks.md).
_BY_HASH = select(keys).where(keys.c.key_hash == bindparam("key_hash"))


class KeyError_(ValueError):
    """A bad request to create or revoke a key (one line, for the CLI)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    role: str
    address: str
    name: str | None
    created_at_ms: int
    revoked_at_ms: int | None = None


def _from_row(row: object) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,  # type: ignore[attr-defined]
        role=row.role,  # type: ignore[attr-defined]
        address=row.address,  # type: ignore[attr-defined]
        name=row.name,  # type: ignore[attr-defined]
        created_at_ms=row.created_at_ms,  # type: ignore[attr-defined]
        revoked_at_ms=row.revoked_at_ms,  # type: ignore[attr-defined]
    )


async def create_key(
    db: Database,
    role: str,
    name: str | None = None,
    address: str | None = None,
    wallet_dir: Path | None = None,
) -> tuple[str, ApiKey, Path | None]:
    """A new key bound to `address`; without one, a fresh key pair is made and its private
    key written to `wallet_dir/<address>.key`. Returns (api_key, record, key file)."""
    if role not in ROLES:
        raise KeyError_(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if name is not None and len(name) > MAX_NAME:
        raise KeyError_(f"name is longer than {MAX_NAME} characters")
    key_file: Path | None = None
    if address is None:
        if wallet_dir is None:
            raise KeyError_("an address or a directory for the new wallet key is needed")
        private = generate_private_key()
        address = address_of(private)
        key_file = wallet_dir / "wallets" / f"{address}.key"
        save_key_file(key_file, private)
    elif not is_address(address):
        raise KeyError_(f"{address!r} is not an address (ait1 + 40 lower-case hex)")
    api_key = new_api_key()
    record = ApiKey(new_key_id(), role, address, name, now_ms())

    async def op(conn: AsyncConnection) -> None:
        await conn.execute(
            keys.insert(),
            {
                "key_id": record.key_id,
                "key_hash": hash_api_key(api_key),
                "role": record.role,
                "address": record.address,
                "name": record.name,
                "created_at_ms": record.created_at_ms,
            },
        )

    await db.write(op)
    return api_key, record, key_file


async def list_keys(db: Database) -> list[ApiKey]:
    async with db.read() as conn:
        rows = await conn.execute(select(keys).order_by(keys.c.created_at_ms, keys.c.key_id))
        return [_from_row(row) for row in rows]


async def revoke_key(db: Database, key_id: str) -> ApiKey | None:
    """Revoke a key; None if there is no such key. Revoking twice keeps the first time."""

    async def op(conn: AsyncConnection) -> ApiKey | None:
        await conn.execute(
            update(keys)
            .where(keys.c.key_id == key_id, keys.c.revoked_at_ms.is_(None))
            .values(revoked_at_ms=now_ms())
        )
        row = (await conn.execute(select(keys).where(keys.c.key_id == key_id))).first()
        return None if row is None else _from_row(row)

    return await db.write(op)


async def authenticate(db: Database, api_key: str) -> ApiKey | None:
    """The live (not revoked) key with this secret, or None."""
    if not api_key or len(api_key) > 200:
        return None
    async with db.read() as conn:
        row = (await conn.execute(_BY_HASH, {"key_hash": hash_api_key(api_key)})).first()
    if row is None or row.revoked_at_ms is not None:
        return None
    return _from_row(row)
