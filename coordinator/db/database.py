"""Engines and the writer for SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg).

SQLite: one writer connection that opens `BEGIN IMMEDIATE` (a write lock taken up front, so
concurrent writers wait on `busy_timeout` instead of failing on lock upgrade) and a pool of
readers, which WAL lets read while a write is in progress. PostgreSQL: one pooled engine;
claims use `FOR UPDATE SKIP LOCKED` so several coordinator processes share the queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from coordinator.db.inline import inline_creator
from coordinator.db.migrations import migrate
from coordinator.db.writer import GroupWriter, WriteOp, run_alone

T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_engine(url: str, *, writer: bool) -> AsyncEngine:
    path = make_url(url).database
    extra: dict[str, Any] = {}
    if path and path != ":memory:":
        # Statements run on the loop thread, not aiosqlite's (see coordinator.db.inline).
        extra["async_creator"] = inline_creator(path, SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_async_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        # The writer is one connection; readers are many and cheap. Overflow connections
        # are closed when returned, so the pool is sized for the busy case (no churn).
        pool_size=1 if writer else 32,
        max_overflow=0 if writer else 32,
        # Readers run in autocommit (no BEGIN above): no BEGIN/ROLLBACK round trips.
        pool_reset_on_return="rollback" if writer else None,
        **extra,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, record)
        # Take transaction control from pysqlite so SAVEPOINTs work (SQLAlchemy docs,
        # "Serializable isolation / Savepoints / Transactional DDL").
        dbapi_connection.isolation_level = None

    if writer:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    """The coordinator's database: `read()` connections and `write(op)` group commits."""

    def __init__(self, url: str, write_engine: AsyncEngine, read_engine: AsyncEngine) -> None:
        self.url = url
        self.dialect = write_engine.dialect.name  # "sqlite" | "postgresql"
        self.write_engine = write_engine
        self.read_engine = read_engine
        self.writer = GroupWriter(write_engine)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @classmethod
    def create(cls, url: str) -> Database:
        """Engines only (no I/O yet); `start()` migrates and starts the writer."""
        parsed = make_url(url)
        if parsed.drivername.startswith("sqlite"):
            if parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            return cls(url, _sqlite_engine(url, writer=True), _sqlite_engine(url, writer=False))
        engine = create_async_engine(url, pool_size=10, max_overflow=10)
        return cls(url, engine, engine)

    async def start(self, *, start_writer: bool = True) -> None:
        try:
            await run_alone(self.write_engine, migrate)
        except BaseException:
            await self._dispose()
            raise
        if start_writer:
            self.writer.start()

    @classmethod
    async def open(cls, url: str, *, start_writer: bool = True) -> Database:
        """Create engines, migrate the schema, start the group-commit writer."""
        db = cls.create(url)
        await db.start(start_writer=start_writer)
        return db

    async def close(self) -> None:
        await self.writer.stop()
        await self._dispose()

    async def _dispose(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (never commits)."""
        async with self.read_engine.connect() as conn:
            yield conn

    async def write(self, op: WriteOp[T]) -> T:
        """Run `op(conn)` in the next group-commit transaction; its result once committed."""
        return await self.writer.submit(op)

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))

    @property
    def asyncpg_dsn(self) -> str:
        """The plain `postgresql://` DSN for asyncpg (LISTEN/NOTIFY)."""
        url = make_url(self.url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)
