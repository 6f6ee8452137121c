"""The coordinator's database: SQLite (sync Core on the loop thread) or PostgreSQL (asyncpg).

SQLite: one writer connection whose transactions open with `BEGIN IMMEDIATE`, and one shared
reader connection that WAL lets read while a write is in progress
(`coordinator.db.sqlite_sync`). PostgreSQL: one pooled async engine whose connections run
the hot statements straight on asyncpg (`coordinator.db.pg_prepared`); claims use
`FOR UPDATE SKIP LOCKED` so several coordinator processes share the queue.

Writes go through group-commit writers (`coordinator.db.writer`): one on SQLite, whose
database has one write lock; on PostgreSQL a second one commits the coalesced operations
declared `own_writer` (the dispatcher's claims) beside the first one's transactions, as
another coordinator process's would. Under the bench a claim otherwise
waited for the commit in progress and then its own (~20 ms each there, round trips on a
busy loop), and a miner's free slot with it (docs/benchmarks.md, round 18).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from coordinator.db.coalesce import Coalescer, RunMany, wants_own_writer
from coordinator.db.migrations import LATEST_VERSION, migrate
from coordinator.db.pg_prepared import PreparedConnection
from coordinator.db.schema import schema_version
from coordinator.db.sqlite_long_reads import LongReadConnection, LongReads
from coordinator.db.sqlite_sync import SqliteStore
from coordinator.db.writer import GroupWriter, Transaction, WriteOp, engine_transaction, run_alone

T = TypeVar("T")
Request = TypeVar("Request")
Answer = TypeVar("Answer")

PG_POOL_SIZE = 32  # connections kept open per coordinator process
PG_POOL_OVERFLOW = 0  # a burst waits for one instead of opening (and closing) more
_SCHEMA_VERSION = select(func.max(schema_version.c.version))


class Database:
    """`read()` connections and `write(op)` group commits, whichever the server."""

    def __init__(
        self, url: str, *, sqlite: SqliteStore | None = None, engine: AsyncEngine | None = None
    ) -> None:
        self.url = url
        self._sqlite = sqlite
        self._engine = engine
        # ':memory:' lives in one connection, which the reader shares: no thread of its own.
        self._long_reads = None if sqlite is None or sqlite.memory else LongReads(sqlite.path)
        if sqlite is not None:
            self.dialect = sqlite.dialect_name  # "sqlite"
            self._transaction: Transaction = sqlite.transaction
        else:
            assert engine is not None
            self.dialect = engine.dialect.name  # "postgresql"
            self._transaction = engine_transaction(engine, PreparedConnection)
        self.writer = GroupWriter(self._transaction)
        # Every group-commit writer, the main one first; the last takes `own_writer` work.
        self.writers: tuple[GroupWriter, ...] = (self.writer,)
        if sqlite is None:
            self.writers += (GroupWriter(self._transaction, self.writer.commit_seconds),)
        self._coalescers: dict[Any, Coalescer[Any, Any]] = {}

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite file other processes can open too; None for ':memory:' and PostgreSQL."""
        if self._sqlite is None or self._sqlite.memory:
            return None
        return self._sqlite.path

    @classmethod
    def create(cls, url: str) -> Database:
        """Engines only (no I/O yet); `start()` migrates and starts the writer."""
        parsed = make_url(url)
        if parsed.drivername.startswith("sqlite"):
            path = parsed.database or ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            return cls(url, sqlite=SqliteStore(path))
        # Sized for the busy case, with no overflow: overflow connections are closed when
        # returned, and opening asyncpg connections (plus their statement caches) cost ~12%
        # of the coordinator's CPU under the bench at 10 + 10 and ~4% at 24 + 8; a burst
        # now waits its turn (docs/benchmarks.md). Nothing holds a read connection while
        # waiting for another or for the writer, so waiting cannot deadlock.
        engine = create_async_engine(url, pool_size=PG_POOL_SIZE, max_overflow=PG_POOL_OVERFLOW)
        return cls(url, engine=engine)

    async def start(self, *, start_writer: bool = True) -> None:
        try:
            await run_alone(self._transaction, migrate)
        except BaseException:
            await self._dispose()
            raise
        if start_writer:
            for writer in self.writers:
                writer.start()
        if self._sqlite is not None:
            self._sqlite.start_checkpoints()

    @classmethod
    async def open(cls, url: str, *, start_writer: bool = True) -> Database:
        """Create engines, migrate the schema, start the group-commit writer."""
        db = cls.create(url)
        await db.start(start_writer=start_writer)
        return db

    async def close(self) -> None:
        for writer in reversed(self.writers):
            await writer.stop()
        await self._dispose()

    async def _dispose(self) -> None:
        if self._long_reads is not None:
            self._long_reads.close()
        if self._sqlite is not None:
            await self._sqlite.stop_checkpoints()
            self._sqlite.close()
        if self._engine is not None:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (never commits)."""
        if self._sqlite is not None:
            yield self._sqlite.reader()
            return
        assert self._engine is not None
        async with PreparedConnection(self._engine) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read_long(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that take long and answer few rows: counts and sums over
        a history. On SQLite its statements run on a worker thread with a connection of
        its own (`coordinator.db.sqlite_long_reads`), so the event loop serves everything
        else meanwhile; on PostgreSQL (asyncpg waits without blocking) it is `read()`."""
        if self._long_reads is not None:
            yield LongReadConnection(self._long_reads)
            return
        async with self.read() as conn:
            yield conn

    async def write(self, op: WriteOp[T]) -> T:
        """Run `op(conn)` in the next group-commit transaction; its result once committed."""
        return await self.writer.submit(op)

    async def write_coalesced(self, run_many: RunMany[Request, Answer], request: Request) -> Answer:
        """Write `request` by `run_many` together with the other requests for it that
        arrive before the writer gets to them (`coordinator.db.coalesce`)."""
        answer: Answer = await self.coalescer(run_many).submit(request)
        return answer

    def coalescers(self) -> dict[str, Coalescer[Any, Any]]:
        """Each coalescer in use, by its operation's name (for /metrics)."""
        return {run_many.__name__: c for run_many, c in self._coalescers.items()}

    def coalescer(self, run_many: RunMany[Request, Answer]) -> Coalescer[Request, Answer]:
        """The one coalescer for `run_many` on this database (its counters: /metrics),
        on the second writer when `run_many` is declared `own_writer`."""
        coalescer = self._coalescers.get(run_many)
        if coalescer is None:
            write = self.writers[-1].submit if wants_own_writer(run_many) else self.write
            coalescer = self._coalescers[run_many] = Coalescer(write, run_many)
        return coalescer

    async def unusable_because(self) -> str | None:
        """Why this process cannot use the database now, in one sentence, or None: it does
        not answer, or a coordinator of a newer release migrated it while this one ran
        (this one's statements may no longer fit the tables). One read."""
        try:
            async with self.read() as conn:
                version = int((await conn.execute(_SCHEMA_VERSION)).scalar_one() or 0)
        except Exception as exc:
            return f"database unreachable: {type(exc).__name__}"
        if version > LATEST_VERSION:
            return (
                f"database schema version {version} is newer than this coordinator "
                f"({LATEST_VERSION}); upgrade the coordinator"
            )
        return None

    @property
    def asyncpg_dsn(self) -> str:
        """The plain `postgresql://` DSN for asyncpg (LISTEN/NOTIFY)."""
        url = make_url(self.url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)
