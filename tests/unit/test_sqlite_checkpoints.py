"""SQLite WAL checkpoints run on a worker thread, not inside the writer's commits."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from coordinator.db import sqlite_sync
from coordinator.db.database import Database

ROWS, ROW_BYTES = 64, 128 * 1024  # 8 MiB: twice SQLite's default autocheckpoint (1,000 pages)


def _size(path: str | Path) -> int:
    return Path(path).stat().st_size


async def _open_with_scratch(path: Path) -> Database:
    db = await Database.open(f"sqlite:///{path}")

    async def create(conn: Any) -> None:
        await conn.execute(text("CREATE TABLE scratch (b BLOB)"))

    await db.write(create)
    return db


async def _fill(db: Database) -> None:
    async def fill(conn: Any) -> None:
        for _ in range(ROWS):
            await conn.execute(
                text("INSERT INTO scratch VALUES (:b)"), {"b": os.urandom(ROW_BYTES)}
            )

    await db.write(fill)


async def test_a_large_commit_leaves_the_wal_to_the_checkpointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_sync, "CHECKPOINT_INTERVAL_S", 3600.0)  # no round meanwhile
    path = tmp_path / "coordinator.db"
    db = await _open_with_scratch(path)
    try:
        before = _size(path)
        await _fill(db)
        # The commit wrote the WAL only: checkpointing inline would have grown the file.
        assert _size(path) - before < ROW_BYTES
        assert _size(f"{path}-wal") >= ROWS * ROW_BYTES
        assert db._sqlite is not None
        await db._sqlite.stop_checkpoints()  # stopping runs one last round
        assert _size(path) - before >= ROWS * ROW_BYTES
    finally:
        await db.close()


async def test_the_checkpointer_copies_the_wal_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_sync, "CHECKPOINT_INTERVAL_S", 0.05)
    path = tmp_path / "coordinator.db"
    db = await _open_with_scratch(path)
    try:
        before = _size(path)
        await _fill(db)
        for _ in range(200):  # bounded: ~10 s
            if _size(path) - before >= ROWS * ROW_BYTES:
                break
            await asyncio.sleep(0.05)
        assert _size(path) - before >= ROWS * ROW_BYTES
        async with db.read() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM scratch")) == ROWS
    finally:
        await db.close()
