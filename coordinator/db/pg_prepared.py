"""Prepared plans on PostgreSQL: the hot statements run on asyncpg without the bridge.

SQLAlchemy's asyncpg dialect runs every statement through its greenlet bridge, an
execution context and a cursor wrapper; under the bench that was about half of the
coordinator's samples on PostgreSQL (docs/benchmarks.md). `PreparedConnection` keeps the
`AsyncConnection` API but runs a statement that has a plan (`coordinator.db.prepared`:
SQL compiled once for this dialect, parameter order, result keys) straight on the
dialect's own asyncpg connection: the same SQL text, the same per-connection cache of
server-side prepared statements and, in a transaction (`conn.begin()`, the group-commit
writer's), the same asyncpg transaction SQLAlchemy would have used. A read outside any
transaction (`Database.read()`) runs as a single statement instead of in the
BEGIN ... ROLLBACK the adapter wraps around it. Errors come out as SQLAlchemy's
exception classes (IntegrityError, ...), as they would through SQLAlchemy.

This reaches into the dialect's adapter (`_execute_mutex`, `_start_transaction`,
`_prepare`, `_handle_exception`); tests run every service path through it on a real
PostgreSQL server, so a SQLAlchemy upgrade that changes them fails there.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import exc
from sqlalchemy.engine.result import IteratorResult
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db import prepared

T = TypeVar("T")

_ROWCOUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")


class PreparedConnection(AsyncConnection):
    """An `AsyncConnection` whose `execute` takes the plan path when it can."""

    __slots__ = ()
    _plans = prepared.PlanCache()  # plans depend on the statement and this one dialect

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        if execution_options is None:
            result = await _run(self, statement, parameters)
            if result is not None:
                return result  # the same reading API as a buffered CursorResult
        return await super().execute(statement, parameters, execution_options=execution_options)

    def begin_nested(self) -> Any:
        return _Savepoint(self)


async def _run(
    conn: AsyncConnection, statement: Any, parameters: Any
) -> IteratorResult[Any] | prepared.DmlResult | None:
    sync = conn.sync_connection
    if sync is None:
        return None
    dialect = sync.dialect
    bound = prepared.bind(PreparedConnection._plans, dialect, statement, parameters)
    if bound is None:
        return None
    plan, args, many = bound

    async def execute(adapter: Any) -> tuple[Any, list[Any] | None]:
        stmt, _attributes = await adapter._prepare(
            plan.sql,
            dialect._invalidate_schema_cache_asof,  # type: ignore[attr-defined]
        )
        if many:  # pipelined by asyncpg; no row count, as through SQLAlchemy
            await stmt.executemany(args)
            return stmt, None
        return stmt, await stmt.fetch(*args)

    stmt, rows = await _on_driver(conn, plan.sql, args, execute)
    if rows is None:
        return prepared.DmlResult(-1)
    if plan.metadata is None:
        match = _ROWCOUNT.match(stmt.get_statusmsg() or "")
        return prepared.DmlResult(int(match.group(1)) if match else -1)
    return IteratorResult(plan.metadata, iter(plan.rows([tuple(r) for r in rows])))


async def _on_driver(
    conn: AsyncConnection, sql: str, args: Any, work: Callable[[Any], Awaitable[T]]
) -> T:
    """`work(adapter)` under the adapter's execute mutex, inside SQLAlchemy's transaction
    when there is one; errors come out as SQLAlchemy raises them."""
    sync = conn.sync_connection
    assert sync is not None
    adapter: Any = sync.connection.dbapi_connection
    async with adapter._execute_mutex:
        try:
            # Outside a transaction a read runs alone: the adapter would wrap it in
            # BEGIN ... ROLLBACK, two round trips that isolate nothing under READ COMMITTED.
            if adapter._transaction is None and sync.in_transaction():
                await adapter._start_transaction()
            return await work(adapter)
        except Exception as error:
            failure = error
    # Translated outside the mutex: invalidating a lost connection may need it.
    raise await _translated(conn, adapter, sql, args, failure) from failure


async def _translated(
    conn: AsyncConnection, adapter: Any, sql: str, args: Any, error: Exception
) -> Exception:
    """`error` as SQLAlchemy raises it; a lost connection is invalidated, as SQLAlchemy
    would, so the pool does not hand it out again."""
    dialect = conn.sync_engine.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        adapter._handle_exception(error)  # raises the DBAPI-style translation
    except dbapi_error as translated:
        dbapi: Any = dialect.dbapi
        if isinstance(translated, (dbapi.InvalidCachedStatementError, dbapi.InternalServerError)):
            # A schema change made cached statements stale: re-prepare from now on, as
            # SQLAlchemy's execution context does.
            dialect._invalidate_schema_cache()  # type: ignore[attr-defined]
        lost = dialect.is_disconnect(translated, adapter, None)
        if lost:
            await conn.invalidate(translated)
        return exc.DBAPIError.instance(
            sql, args, translated, dbapi_error, connection_invalidated=lost, dialect=dialect
        )
    except Exception as other:
        return other
    return error


class _Savepoint:
    """`async with conn.begin_nested():` as plain SAVEPOINT / RELEASE on the same path
    (the group-commit writer opens one per operation, always inside its transaction)."""

    _count = 0

    def __init__(self, conn: AsyncConnection) -> None:
        _Savepoint._count += 1
        self._conn = conn
        self._name = f"ait_sp_{_Savepoint._count}"

    async def _run(self, sql: str) -> None:
        await _on_driver(self._conn, sql, (), lambda adapter: adapter._connection.execute(sql))

    async def __aenter__(self) -> _Savepoint:
        await self._run(f"SAVEPOINT {self._name}")
        return self

    async def __aexit__(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
        if exc_type is not None:
            await self._run(f"ROLLBACK TO SAVEPOINT {self._name}")
        await self._run(f"RELEASE SAVEPOINT {self._name}")


__all__ = ["PreparedConnection"]
