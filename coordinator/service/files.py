"""Uploaded files (job inputs): stored in the database, owned by an address."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db import schema
from coordinator.service.core import Core
from protocol.canonical import sha256_hex
from protocol.ids import new_file_id
from protocol.timefmt import now_ms

if TYPE_CHECKING:
    from coordinator.service.jobs import FileUpload


def new_file_row(owner: str, upload: FileUpload, now: int) -> dict[str, Any]:
    return {
        "file_id": new_file_id(),
        "owner_address": owner,
        # PostgreSQL text cannot hold NUL: drop it from client-chosen names.
        "filename": upload.filename.replace("\x00", "")[:255] if upload.filename else None,
        "content_type": upload.content_type.replace("\x00", "")[:200] or "application/octet-stream",
        "bytes": len(upload.data),
        "sha256": sha256_hex(upload.data),
        "data": upload.data,
        "created_at_ms": now,
    }


async def insert_file(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(schema.files.insert(), row)


async def store_file(core: Core, owner: str, upload: FileUpload) -> dict[str, Any]:
    row = new_file_row(owner, upload, now_ms())

    async def op(conn: AsyncConnection) -> None:
        await insert_file(conn, row)

    await core.db.write(op)
    return {k: v for k, v in row.items() if k != "data"}
