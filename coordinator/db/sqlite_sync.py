"""SQLite through SQLAlchemy's sync Core, run on the event-loop thread.

The async adapter (aiosqlite under SQLAlchemy's greenlet bridge) cost about 150 us of CPU
per statement even with its thread hop removed, and a pool checkout per read another
250 us; sync Core on the same connection costs about half, and a read needs no checkout
(docs/benchmarks.md). SQLite statements take microseconds (WAL with `synchronous=NORMAL`
does not fsync on commit), so running them inline blocks the loop no longer than the
adapter's own bookkeeping did.

`SyncConnection` gives the service code the `AsyncConnection` face it is written against
(`await conn.execute(...)`), over a sync `Connection`. Its awaitables complete at once.

Rows are fetched in full when a statement runs (`_BufferedCursor`): a cursor left open on
the shared reader connection would pin that connection's WAL snapshot, and every later
read through it would see the database as it was then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncResult
from sqlalchemy.pool import QueuePool, StaticPool

from coordinator.db import prepared
from coordinator.db.migrations import SchemaError
from protocol.waits import wait_event

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# WAL checkpoints run on a worker thread this often. Left to SQLite, the commit that takes
# the WAL past 1,000 pages copies them into the database file and fsyncs it, on the event
# loop: ~14 ms, about 3 times a second at 100 jobs/s, which made the p99 of every request
# (docs/benchmarks.md, round 4).
CHECKPOINT_INTERVAL_S = 0.5
# Should the worker thread fall behind or fail, a commit still checkpoints at this size.
FALLBACK_AUTOCHECKPOINT_PAGES = 16_000


# UPDATE ... RETURNING came in SQLite 3.35 (which also has 3.32's limit of 32,766 bound
# parameters: the sealer's statements take up to 1,025).
MIN_SQLITE_VERSION = (3, 35, 0)


class SqliteTooOld(SchemaError):
    """The SQLite library this Python's sqlite3 module links is older than we need."""


def require_sqlite(version: tuple[int, int, int]) -> None:
    """Refuse, in one sentence, a SQLite the coordinator's statements would fail on."""
    if version < MIN_SQLITE_VERSION:
        found, needed = (".".join(map(str, v)) for v in (version, MIN_SQLITE_VERSION))
        raise SqliteTooOld(
            f"this Python's sqlite3 module links SQLite {found}; the coordinator needs "
            f'{needed} or newer (or use PostgreSQL: db = "postgresql+asyncpg://...")'
        )


class _BufferedCursor(sqlite3.Cursor):
    """A cursor that reads every row when its statement runs, so the statement is
    finished (and its read snapshot released) before anyone looks at the rows."""

    _rows: list[Any]
    _next: int

    def execute(self, sql: str, parameters: Any = (), /) -> _BufferedCursor:
        super().execute(sql, parameters)
        self._rows = super().fetchall() if self.description else []
        self._next = 0
        return self

    def fetchone(self) -> Any:
        if self._next >= len(getattr(self, "_rows", ())):
            return None
        row = self._rows[self._next]
        self._next += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        rows = getattr(self, "_rows", [])[self._next : self._next + count]
        self._next += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        rows = getattr(self, "_rows", [])[self._next :]
        self._next = len(getattr(self, "_rows", ()))
        return rows


class _BufferedConnection(sqlite3.Connection):
    def cursor(self, factory: Any = _BufferedCursor) -> Any:
        return super().cursor(factory)


def sqlite_engine(path: str) -> Engine:
    """A sync engine on `path` (or ':memory:'): WAL, `synchronous=NORMAL`, foreign keys,
    `busy_timeout`; commits checkpoint by themselves only past the fallback size (the
    store's checkpoint task does it otherwise)."""
    memory = path in ("", ":memory:")

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            path or ":memory:",
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
            factory=_BufferedConnection,
            isolation_level=None,  # transactions are ours (SAVEPOINTs work)
        )

    engine = create_engine(
        "sqlite://",
        creator=connect,
        poolclass=StaticPool if memory else QueuePool,
        **({} if memory else {"pool_size": 1, "max_overflow": 0}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_AUTOCHECKPOINT_PAGES}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class _Savepoint:
    """`async with conn.begin_nested():` as plain SAVEPOINT / RELEASE on the DBAPI
    connection: the group-commit writer opens one per operation, and SQLAlchemy's nested
    transaction objects cost several times the statements themselves. The sync
    `Connection` only ever sees the outer transaction, which is what commits."""

    _names = itertools.count()

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._name = f"ait_sp_{next(self._names)}"

    def _run(self, sql: str) -> None:
        self._conn.connection.driver_connection.execute(sql)  # type: ignore[union-attr]

    async def __aenter__(self) -> _Savepoint:
        self._run(f"SAVEPOINT {self._name}")
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._run(f"ROLLBACK TO SAVEPOINT {self._name}")
        self._run(f"RELEASE SAVEPOINT {self._name}")


class SyncConnection(AsyncConnection):
    """The `AsyncConnection` calls the service code uses, run synchronously on a sync
    `Connection` (SQLite only). Anything else it is asked raises AttributeError."""

    _plans = prepared.PlanCache()  # shared: plans depend only on the statement and dialect

    def __init__(self, sync_connection: Connection) -> None:  # no super(): no AsyncEngine
        self.sync_connection = sync_connection
        self.sync_engine = sync_connection.engine

    @property
    def _proxied(self) -> Connection:
        assert self.sync_connection is not None
        return self.sync_connection

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> CursorResult[Any]:
        if execution_options is None:
            result = prepared.run(self._proxied, self._plans, statement, parameters)
            if result is not None:
                return result  # type: ignore[return-value]  # the same reading API
        return self._proxied.execute(statement, parameters, execution_options=execution_options)

    async def scalar(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        return self._proxied.scalar(statement, parameters, execution_options=execution_options)

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> CursorResult[Any]:
        return self._proxied.exec_driver_sql(statement, parameters, execution_options)

    async def stream(  # type: ignore[override]
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> AsyncResult[Any]:
        result = self._proxied.execute(statement, parameters, execution_options=execution_options)
        return AsyncResult(result)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(self._proxied, *args, **kwargs)

    def begin_nested(self) -> Any:
        return _Savepoint(self._proxied)


def _checkpoint(path: str) -> None:
    """Copy what the WAL holds into the database file (PASSIVE: never waits for, nor
    blocks, the writer or readers). Runs on a worker thread, with a connection of its own:
    sqlite3 releases the GIL while SQLite works, so the event loop runs on meanwhile."""
    with contextlib.closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as conn:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def usable_connection(conn: Connection | None) -> Connection | None:
    """`conn` unless it is closed or an error invalidated it."""
    if conn is None or conn.closed or conn.invalidated:
        return None
    return conn


class SqliteStore:
    """One writer connection (transactions for the group-commit writer) and one shared
    reader connection (autocommit: each statement sees the latest commit; WAL lets it read
    while a write is in progress). Both live on the loop's thread, checked out for good.

    The writer's transactions are `BEGIN IMMEDIATE` ... `COMMIT` on the sqlite3
    connection itself (the write lock up front, so another process's writer waits on
    `busy_timeout` instead of failing on upgrade). Through SQLAlchemy, a pool checkout,
    a transaction object and its commit cost about 12% of the coordinator's CPU at 100
    jobs/s, where nearly every write is a commit of its own (docs/benchmarks.md). The sync
    `Connection` sees one logical transaction that never ends; SQLite connections run
    with `isolation_level=None`, so SQLAlchemy never begins or commits on its own.
    """

    def __init__(self, path: str) -> None:
        require_sqlite(sqlite3.sqlite_version_info)
        self.memory = path in ("", ":memory:")
        self._write_engine = sqlite_engine(path)
        # ':memory:' is private to its connection: readers share the writer's.
        self._read_engine = self._write_engine if self.memory else sqlite_engine(path)
        self._reader: SyncConnection | None = None
        self._writer: Connection | None = None
        self.path = path
        self._checkpoints: asyncio.Task[None] | None = None
        self._stop_checkpoints = asyncio.Event()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        conn = self._writer = usable_connection(self._writer) or self._write_engine.connect()
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            driver.execute("BEGIN IMMEDIATE")
            yield SyncConnection(conn)
            driver.execute("COMMIT")
        except BaseException:
            if driver.in_transaction:
                driver.execute("ROLLBACK")
            raise

    def reader(self) -> SyncConnection:
        """The shared reader connection (made on first use, remade if closed or
        invalidated by an error)."""
        if self._reader is None or usable_connection(self._reader.sync_connection) is None:
            # (':memory:': StaticPool hands out the writer's DBAPI connection again.)
            self._reader = SyncConnection(self._read_engine.connect())
        return self._reader

    def start_checkpoints(self) -> None:
        """Checkpoint the WAL from a worker thread from now on (a file database only;
        `Database.start` calls this, so commits never need to)."""
        if not self.memory and self._checkpoints is None:
            self._stop_checkpoints.clear()
            self._checkpoints = asyncio.get_running_loop().create_task(
                self._checkpoint_forever(), name="sqlite-checkpoints"
            )

    async def stop_checkpoints(self) -> None:
        """Let a checkpoint in progress finish, then stop."""
        if self._checkpoints is not None:
            self._stop_checkpoints.set()
            await self._checkpoints
            self._checkpoints = None

    async def _checkpoint_forever(self) -> None:
        while not self._stop_checkpoints.is_set():
            await wait_event(self._stop_checkpoints, CHECKPOINT_INTERVAL_S)
            try:
                await asyncio.to_thread(_checkpoint, self.path)
            except Exception as exc:  # keep going; the fallback size still bounds the WAL
                log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        for conn in (self._reader and self._reader.sync_connection, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._reader = self._writer = None
        self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            self._read_engine.dispose()

    @property
    def dialect_name(self) -> str:
        return self._write_engine.dialect.name


__all__ = [
    "SqliteStore",
    "SqliteTooOld",
    "SyncConnection",
    "require_sqlite",
    "sqlite_engine",
    "usable_connection",
]
