"""SQLite WAL checkpoints run on a worker thread, not inside the writer's commits."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from sqlalchemy import text

from coordinator.db.database import Database
from coordinator.db.sqlite_sync import CHECKPOINT_INTERVAL_S

ROWS, ROW_BYTES = 64, 128 * 1024  # 8 MiB: twice SQLite's default autocheckpoint (1,000 pages)


async def test_commits_leave_the_wal_to_the_background_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    db = await Database.open(f"sqlite:///{path}")
    try:

        async def create(conn: Any) -> None:
            await conn.execute(text("CREATE TABLE scratch (b BLOB)"))

        await db.write(create)
        await asyncio.sleep(2 * CHECKPOINT_INTERVAL_S)  # the schema reaches the file
        before = os.path.getsize(path)

        async def fill(conn: Any) -> None:
            for _ in range(ROWS):
                await conn.execute(
                    text("INSERT INTO scratch VALUES (:b)"), {"b": os.urandom(ROW_BYTES)}
                )

        await db.write(fill)
        # The commit wrote the WAL only: an inline checkpoint would have grown the file.
        assert os.path.getsize(path) - before < ROW_BYTES
        assert os.path.getsize(f"{path}-wal") >= ROWS * ROW_BYTES
        for _ in range(100):  # bounded: ~20 checkpoint intervals
            if os.path.getsize(path) - before >= ROWS * ROW_BYTES:
                break
            await asyncio.sleep(CHECKPOINT_INTERVAL_S / 5)
        assert os.path.getsize(path) - before >= ROWS * ROW_BYTES  # copied in the background
        async with db.read() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM scratch")) == ROWS
    finally:
        await db.close()
