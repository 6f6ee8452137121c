"""An aiosqlite connection that runs each SQLite call on the event-loop thread.

aiosqlite hands every call (execute, fetch, commit) to a worker thread and back. For the
group-commit writer that hop is the dominant cost: one batch runs dozens of statements in
a row, and each has to win the GIL back from a busy event loop (up to the 5 ms switch
interval), so under load the writer convoyed at a few hundred statements per second
(docs/benchmarks.md). The statements themselves take microseconds: WAL with
`synchronous=NORMAL` does not fsync on commit, and `BEGIN IMMEDIATE` only waits when
another process (a `coordinator keys` command) holds the write lock for a moment. So the
writer runs them inline; SQLAlchemy's adapter sees an awaitable that completes at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite


class InlineConnection(aiosqlite.Connection):
    """`aiosqlite.Connection` whose calls run inline instead of on its worker thread
    (the thread still opens and closes the connection)."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or self._connection is None:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def inline_creator(database: str, timeout_s: float) -> Callable[[], Any]:
    """An `async_creator` for `create_async_engine`: opens an `InlineConnection`."""

    async def create() -> InlineConnection:
        def connector() -> sqlite3.Connection:
            # Opened on the worker thread, then used from the loop's thread.
            return sqlite3.connect(database, timeout=timeout_s, check_same_thread=False)

        conn = InlineConnection(connector, 64)
        conn._thread.daemon = True
        await conn  # starts the thread and opens the connection there
        return conn

    return create


__all__ = ["InlineConnection", "inline_creator"]
