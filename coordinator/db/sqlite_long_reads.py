"""SQLite reads that take long and answer few rows (counts and sums over a history), on a
worker thread with a connection of its own.

The coordinator's other SQLite statements run on the event-loop thread
(`coordinator.db.sqlite_sync`) and take microseconds. A count over a long history does
not: 5 ms for a client's 68,000 transfers, 15 ms for a history's 38,000 jobs, growing with
the history, and every request, dispatch and result waited meanwhile. sqlite3 releases the
GIL while SQLite works, so on a thread of its own such a read leaves the loop free.

Only for statements that answer a few rows: each row a statement returns needs the GIL
back, and a busy loop hands it over once per switch interval (5 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db import prepared
from coordinator.db.sqlite_sync import sqlite_engine, usable_connection


class LongReads:
    """One worker thread and its connection (made there on first use, remade if an error
    invalidated it); reads queue for it one at a time."""

    def __init__(self, path: str) -> None:
        self._engine = sqlite_engine(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-long-read")
        self._plans = prepared.PlanCache()  # the loop thread's cache is not shared
        self._conn: Connection | None = None  # touched on the worker thread only
        self._used = False  # a read was queued: the executor has started its thread

    @property
    def dialect(self) -> Dialect:
        return self._engine.dialect

    def _execute_here(self, statement: Any, parameters: Any) -> Any:
        conn = self._conn = usable_connection(self._conn) or self._engine.connect()
        result = prepared.run(conn, self._plans, statement, parameters)
        # Rows are read in full as the statement runs (the cursor buffers them), so the
        # loop reads the result without touching the connection.
        return result if result is not None else conn.execute(statement, parameters)

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        self._used = True
        return await loop.run_in_executor(self._executor, self._execute_here, statement, parameters)

    def _close_here(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the connection on its thread once the reads queued have run; stop it.
        A process that never read this way (most start-ups and every test app without
        one) starts no thread just to close nothing."""
        if self._used:
            self._executor.submit(self._close_here)
        self._executor.shutdown(wait=True)
        self._engine.dispose()


class LongReadConnection(AsyncConnection):
    """The `AsyncConnection` face of `LongReads`: `execute` and `scalar` (anything else
    it is asked raises AttributeError: there is no connection on the loop's thread)."""

    def __init__(self, reads: LongReads) -> None:  # no super(): no AsyncEngine
        self._reads = reads

    @property  # type: ignore[misc]  # read-only here: nothing sets a connection's dialect
    def dialect(self) -> Dialect:
        return self._reads.dialect

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> CursorResult[Any]:
        if execution_options is not None:
            raise TypeError("long reads take no execution options")
        result: CursorResult[Any] = await self._reads.execute(statement, parameters)
        return result

    async def scalar(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalar()


__all__ = ["LongReadConnection", "LongReads"]
