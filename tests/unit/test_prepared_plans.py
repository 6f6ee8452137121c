"""coordinator.db.prepared, sqlite_sync and pg_prepared: on SQLite and on PostgreSQL a
statement answers exactly what SQLAlchemy answers, whether it runs through a prepared plan
or through SQLAlchemy; errors are SQLAlchemy's and roll back only their own operation of a
group commit; reads see every commit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from coordinator.db import schema
from coordinator.db.database import PG_POOL_SIZE, Database

miners = schema.miners
_BY_ID = select(miners.c.miner_id, miners.c.jobs_completed).where(
    miners.c.miner_id == bindparam("m_id")
)
_COUNT = (
    update(miners)
    .where(miners.c.miner_id == bindparam("m_id"))
    .values(jobs_completed=miners.c.jobs_completed + 1)
    .returning(miners.c.jobs_completed)
)
_INSERT = miners.insert()


def _miner(miner_id: str) -> dict[str, Any]:
    return {
        "miner_id": miner_id,
        "address": "ait1" + "0" * 40,
        "public_key": "00" * 32,
        "advert": "{}",
        "first_seen_ms": 1,
        "last_seen_ms": 1,
        "jobs_completed": 0,
        "jobs_failed": 0,
        "reputation": 0.5,
    }


async def test_repeated_statements_answer_like_sqlalchemy(db: Database) -> None:
    for batch in range(3):  # many parameter sets: the third runs through the plan

        async def insert(conn: Any, batch: int = batch) -> Any:
            rows = [_miner(f"miner_{i}" if batch == 0 else f"miner_{batch}_{i}") for i in range(3)]
            return await conn.execute(_INSERT, rows)

        await db.write(insert)
    async with db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(miners))).scalar_one() == 9
    seen = []
    for _ in range(4):  # the first sighting runs through SQLAlchemy, later ones prepared

        async def bump(conn: Any) -> Any:
            return (await conn.execute(_COUNT, {"m_id": "miner_1"})).scalar_one()

        seen.append(await db.write(bump))
    assert seen == [1, 2, 3, 4]
    for _ in range(3):
        async with db.read() as conn:
            row = (await conn.execute(_BY_ID, {"m_id": "miner_1"})).one()
            assert (row.miner_id, row.jobs_completed) == ("miner_1", 4)
            assert row._mapping["jobs_completed"] == 4
            assert (await conn.execute(_BY_ID, {"m_id": "nobody"})).first() is None
    async with db.read() as conn:
        total = (await conn.execute(select(func.sum(miners.c.jobs_completed)))).scalar_one()
    assert total == 4

    # Python-side column defaults are SQLAlchemy's to fill in, plan or not.
    for i in range(3):
        values = _miner(f"miner_d{i}")
        del values["jobs_failed"], values["reputation"]

        async def insert_defaults(conn: Any, values: dict[str, Any] = values) -> None:
            await conn.execute(_INSERT, values)

        await db.write(insert_defaults)
    async with db.read() as conn:
        query = select(miners.c.jobs_failed, miners.c.reputation).where(
            miners.c.miner_id.like("miner_d%")
        )
        assert [tuple(r) for r in await conn.execute(query)] == [(0, 1.0)] * 3


async def test_errors_are_sqlalchemy_errors_and_roll_back_only_their_operation(
    db: Database,
) -> None:
    async def insert_one(conn: Any) -> None:
        await conn.execute(_INSERT, _miner("miner_a"))

    await db.write(insert_one)
    for _ in range(3):  # again and again, so the prepared plan is the one that fails
        with pytest.raises(IntegrityError):
            await db.write(insert_one)

    async def missing_parameter(conn: Any) -> None:
        await conn.execute(_BY_ID, {})

    for _ in range(3):
        with pytest.raises(StatementError):
            await db.write(missing_parameter)
    async with db.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(miners))).scalar_one()
    assert count == 1

    # Submitted together they share one transaction: each failing duplicate rolls back to
    # its own savepoint, and the good operations around it commit.
    def insert(miner_id: str) -> Any:
        async def op(conn: Any) -> str:
            await conn.execute(_INSERT, _miner(miner_id))
            return miner_id

        return op

    commits_before = db.writer.batches
    names = ["miner_b", "miner_a", "miner_c", "miner_a", "miner_d"]
    outcomes = await asyncio.gather(*(db.write(insert(n)) for n in names), return_exceptions=True)
    assert db.writer.batches - commits_before == 1
    assert [type(o) if isinstance(o, Exception) else o for o in outcomes] == [
        "miner_b",
        IntegrityError,
        "miner_c",
        IntegrityError,
        "miner_d",
    ]
    async with db.read() as conn:
        ids = (await conn.execute(select(miners.c.miner_id).order_by(miners.c.miner_id))).all()
    assert [r.miner_id for r in ids] == ["miner_a", "miner_b", "miner_c", "miner_d"]


async def test_reads_see_each_commit_even_with_rows_left_unread(db: Database) -> None:
    async def insert(conn: Any) -> None:
        await conn.execute(_INSERT, [_miner(f"miner_{i}") for i in range(5)])

    await db.write(insert)
    async with db.read() as conn:
        # A result never read to its end must not pin the reader's snapshot.
        result = await conn.execute(select(miners.c.miner_id).order_by(miners.c.miner_id))
        assert result.fetchone() is not None

    async def add(conn: Any) -> None:
        await conn.execute(_INSERT, _miner("miner_late"))

    await db.write(add)
    async with db.read() as conn:
        ids = (await conn.execute(select(miners.c.miner_id))).scalars().all()
    assert "miner_late" in ids and len(ids) == 6


async def test_a_schema_change_re_prepares_cached_statements(db: Database) -> None:
    """PostgreSQL caches server-side prepared statements per connection; after a column
    changes type they are stale. The first execution says so (an SQLAlchemy error, as
    through SQLAlchemy), and the next one prepares afresh instead of failing forever."""
    if not db.is_postgres:
        pytest.skip("server-side prepared statements are PostgreSQL's")

    async def insert(conn: Any) -> None:
        await conn.execute(_INSERT, _miner("miner_s"))

    await db.write(insert)

    async def bump(conn: Any) -> Any:
        return (await conn.execute(_COUNT, {"m_id": "miner_s"})).scalar_one()

    for _ in range(3):
        await db.write(bump)  # planned, and prepared on the writer's connection

    async def widen(conn: Any) -> None:
        await conn.exec_driver_sql("ALTER TABLE miners ALTER COLUMN jobs_completed TYPE numeric")

    await db.write(widen)
    outcomes: list[int | str] = []
    for _ in range(3):
        try:
            outcomes.append(int(await db.write(bump)))
        except DBAPIError as error:
            outcomes.append(type(error.orig).__name__)
    assert outcomes == ["InvalidCachedStatementError", 4, 5]


async def test_a_lost_connection_is_invalidated_not_reused(db: Database) -> None:
    """A server-side disconnect during a planned statement comes out as SQLAlchemy's
    error marked `connection_invalidated`, and the pool never hands that connection out
    again: every later read works."""
    if not db.is_postgres:
        pytest.skip("a server that drops connections: PostgreSQL's pg_terminate_backend")

    async def insert(conn: Any) -> None:
        await conn.execute(_INSERT, _miner("miner_l"))

    await db.write(insert)
    async with db.read() as conn:
        for _ in range(3):  # planned from the second run on
            assert (await conn.execute(_BY_ID, {"m_id": "miner_l"})).one().miner_id == "miner_l"
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with db.read() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as lost:
            await conn.execute(_BY_ID, {"m_id": "miner_l"})
        assert lost.value.connection_invalidated
    for _ in range(3 * PG_POOL_SIZE):  # round the whole pool
        async with db.read() as conn:
            assert (await conn.execute(_BY_ID, {"m_id": "miner_l"})).one().miner_id == "miner_l"
