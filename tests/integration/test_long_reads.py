"""`Database.read_long()`: counts and sums over a history. On SQLite they run on a worker
thread with a connection of their own, so the event loop keeps serving requests while
SQLite counts; on PostgreSQL they are ordinary reads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from ait_harness import LoopTurns
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from coordinator.db.database import Database

# A read that keeps SQLite busy for a while (~0.1-0.5 s) and answers one row.
SLOW_COUNT = text(
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000) "
    "SELECT count(*) FROM n"
)


async def test_long_reads_answer_like_reads_and_survive_errors(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        async with db.read_long() as conn:
            assert conn.dialect.name == db.dialect
            assert (await conn.execute(text("SELECT count(*) FROM jobs"))).scalar_one() == 0
            assert await conn.scalar(text("SELECT 6 * 7")) == 42
        with pytest.raises((OperationalError, ProgrammingError)):
            async with db.read_long() as conn:
                await conn.execute(text("SELECT count(*) FROM no_such_table"))
        async with db.read_long() as conn:  # the connection is still usable after an error
            assert await conn.scalar(text("SELECT 1")) == 1
    finally:
        await db.close()


async def test_sqlite_long_reads_leave_the_event_loop_free(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    try:
        async with LoopTurns() as turns, db.read_long() as conn:
            assert (await conn.execute(SLOW_COUNT)).scalar_one() == 1_000_000
    finally:
        await db.close()
    # Run on the loop's thread, the count would have let the loop turn once at most.
    assert turns.during > 100, turns.during
    assert not [t for t in threading.enumerate() if t.name.startswith("sqlite-long-read")]


async def test_a_database_that_never_read_long_starts_no_thread_to_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    real_start = threading.Thread.start

    def recording_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        real_start(thread)

    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    monkeypatch.setattr(threading.Thread, "start", recording_start)
    async with db.read() as conn:  # an ordinary read: on the loop's thread
        assert await conn.scalar(text("SELECT 1")) == 1
    await db.close()
    assert not [name for name in started if name.startswith("sqlite-long-read")], started
