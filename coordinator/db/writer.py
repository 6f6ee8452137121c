"""Group commit: one task runs queued write operations many to a transaction.

Measured on this project, one SQLAlchemy+aiosqlite transaction per write gave 574 jobs/s
end to end against about 3,000 with group commit: the commit (fsync, WAL append) is the
cost, so it is shared. One failing operation must not fail the others: a batch first
runs with no savepoints, and should an operation raise, that transaction rolls back and
the batch runs again with each operation inside its own SAVEPOINT, so the one at fault
rolls back alone and its waiter alone gets the exception; the others commit. (Operations
are written to be run again: the coalescer's reuses what it took, and each reads what it
decides on inside its transaction.) Results are handed out only after the commit succeeded.

Savepoints only when an operation fails: on PostgreSQL each SAVEPOINT and RELEASE is a
round trip, 4 of a typical commit's ~14 under the bench, and on SQLite two statements an
operation (docs/benchmarks.md, round 18).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.metrics import STALL_SECONDS_BOUNDS, Histogram

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteOp = Callable[[AsyncConnection], Awaitable[T]]
# Opens a connection in a transaction; commits on a clean exit, rolls back on an exception.
Transaction = Callable[[], AbstractAsyncContextManager[AsyncConnection]]

MAX_BATCH = 256  # operations per transaction
MAX_QUEUE = 10_000  # waiting operations before submit() waits for room


class WriterClosed(RuntimeError):
    """The writer is stopped; nothing more can be written."""


@dataclass
class _Item:
    op: WriteOp[Any]
    future: asyncio.Future[Any]


class GroupWriter:
    def __init__(
        self,
        transaction: Transaction,
        commit_seconds: Histogram | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._transaction = transaction
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(MAX_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (for /metrics)
        self.operations = 0
        self.reruns = 0  # batches run again with savepoints after an operation raised
        # Shared by a database's writers: /metrics has one histogram of its commits (seconds
        # each took; on SQLite the writer runs on the event loop, so a long one stalls it).
        self.commit_seconds = commit_seconds or Histogram(STALL_SECONDS_BOUNDS)

    @property
    def waiting(self) -> int:
        """Operations queued for a transaction not yet begun."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="db-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None

    async def submit(self, op: WriteOp[T]) -> T:
        """Run `op(conn)` in the next group transaction; its result once committed."""
        if not self.running:
            raise WriterClosed("the database writer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(op, future))
        return await future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            live = [item for item in batch if not item.future.cancelled()]
            if live:
                await self._commit(live)

    async def _commit(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        values: list[Any] = []
        try:
            async with self._transaction() as conn:
                for item in batch:
                    values.append(await item.op(conn))
        except Exception as exc:
            if len(batch) == 1:  # its transaction was its savepoint
                _settle(batch[0].future, False, exc)
                return
            self.reruns += 1
            await self._commit_isolated(batch)
            return
        self._committed(batch, started)
        for item, value in zip(batch, values, strict=True):
            _settle(item.future, True, value)

    async def _commit_isolated(self, batch: list[_Item]) -> None:
        """The batch again, each operation in a savepoint of one transaction."""
        outcomes: list[tuple[_Item, bool, Any]] = []
        started = time.perf_counter()
        try:
            async with self._transaction() as conn:
                for item in batch:
                    try:
                        async with conn.begin_nested():
                            value = await item.op(conn)
                        outcomes.append((item, True, value))
                    except Exception as exc:
                        outcomes.append((item, False, exc))
        except Exception as exc:
            if len(batch) > 1:
                # The transaction itself failed (lost connection, serialization, deadlock):
                # retry each alone so one bad operation cannot fail the others.
                log.warning("group commit failed; retrying one by one", exc_info=True)
                for item in batch:
                    await self._commit([item])
                return
            _settle(batch[0].future, False, exc)
            return
        self._committed(batch, started)
        for item, ok, value in outcomes:
            _settle(item.future, ok, value)

    def _committed(self, batch: list[_Item], started: float) -> None:
        self.commit_seconds.observe(time.perf_counter() - started)
        self.batches += 1
        self.operations += len(batch)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def engine_transaction(
    engine: AsyncEngine, connection: Callable[[AsyncEngine], AsyncConnection] = AsyncConnection
) -> Transaction:
    """Transactions on an async engine's pooled connections (of class `connection`)."""

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[AsyncConnection]:
        async with connection(engine) as conn, conn.begin():
            yield conn

    return transaction


async def run_alone(transaction: Transaction, op: WriteOp[T]) -> T:
    """One operation in its own transaction (start-up); no writer task needed."""
    async with transaction() as conn:
        return await op(conn)


__all__ = [
    "GroupWriter",
    "Transaction",
    "WriteOp",
    "WriterClosed",
    "engine_transaction",
    "run_alone",
]
