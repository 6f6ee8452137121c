"""Coalesced writes on a real SQLite database and its group-commit writer: requests that
arrive together are written by one operation, each gets its own answer, and one bad
request fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db.database import Database
from coordinator.db.writer import WriterClosed


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite:///{tmp_path / 'c.db'}")
    await database.write(
        lambda conn: conn.execute(text("CREATE TABLE t (v INTEGER NOT NULL CHECK (v >= 0))"))
    )
    yield database
    await database.close()


async def insert_all(conn: AsyncConnection, values: Sequence[int]) -> list[int]:
    """One INSERT for the whole batch; answers each value doubled."""
    await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": v} for v in values])
    return [2 * v for v in values]


async def stored(db: Database) -> list[int]:
    async with db.read() as conn:
        return sorted(row.v for row in await conn.execute(text("SELECT v FROM t")))


async def test_requests_that_arrive_together_share_one_operation(db: Database) -> None:
    answers = await asyncio.gather(*(db.write_coalesced(insert_all, v) for v in range(10)))
    assert answers == [2 * v for v in range(10)]
    assert await stored(db) == list(range(10))
    coalescer = db.coalescer(insert_all)
    assert (coalescer.operations, coalescer.requests) == (1, 10)
    # Later requests start a new operation: nothing waits for a batch to fill.
    assert await db.write_coalesced(insert_all, 10) == 20
    assert (coalescer.operations, coalescer.requests) == (2, 11)


async def test_a_bad_request_fails_alone(db: Database) -> None:
    outcomes = await asyncio.gather(
        *(db.write_coalesced(insert_all, v) for v in (1, 2, -1, 3)), return_exceptions=True
    )
    assert outcomes[:2] == [2, 4] and outcomes[3] == 6
    assert isinstance(outcomes[2], IntegrityError)
    assert await stored(db) == [1, 2, 3]  # the others committed, each once


async def test_a_stopped_writer_answers_every_request(db: Database) -> None:
    await db.writer.stop()
    outcomes = await asyncio.gather(
        *(db.write_coalesced(insert_all, v) for v in (1, 2)), return_exceptions=True
    )
    assert all(isinstance(o, WriterClosed) for o in outcomes)
