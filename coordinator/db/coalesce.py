"""Coalesced writes: requests of one kind that arrive while the writer is busy are written
by one operation, which can then use one statement per table for all of them.

The operation is queued on the group-commit writer as soon as the first request arrives,
but it takes its requests only when the writer runs it: everything that arrived in
between goes in the same operation, so coalescing adds no wait. Under load the writer is
busy committing the previous batch, and a whole batch's worth gathers meanwhile.

One request must not fail the others: when a coalesced operation raises (or its commit
fails), each of its requests is written again on its own and only the one at fault gets
the exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db.writer import WriteOp

I = TypeVar("I")  # noqa: E741 - a request
R = TypeVar("R")  # its answer

# Writes `requests` in the caller's transaction; one answer per request, in order.
RunMany = Callable[[AsyncConnection, Sequence[I]], Awaitable[list[R]]]
Write = Callable[[WriteOp[Any]], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])

_OWN_WRITER: set[Callable[..., Any]] = set()


def own_writer(run_many: F) -> F:
    """Declare `run_many` safe to commit beside other transactions (as it must be when
    several coordinator processes share a database): on PostgreSQL its operations get a
    group-commit writer of their own (`coordinator.db.database`)."""
    _OWN_WRITER.add(run_many)
    return run_many


def wants_own_writer(run_many: Callable[..., Any]) -> bool:
    return run_many in _OWN_WRITER


@dataclass
class _Waiting(Generic[I, R]):
    request: I
    future: asyncio.Future[R]


class Coalescer(Generic[I, R]):
    def __init__(self, write: Write, run_many: RunMany[I, R]) -> None:
        self._write = write
        self._run_many = run_many
        self._waiting: list[_Waiting[I, R]] = []
        self._queued = False  # an operation is queued and has not taken its requests yet
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        self.operations = 0  # coalesced operations committed
        self.requests = 0  # requests they wrote

    @property
    def waiting(self) -> int:
        """Requests waiting for the writer to take them."""
        return len(self._waiting)

    async def submit(self, request: I) -> R:
        """`request` written (and committed) with whatever else is waiting; its answer."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append(_Waiting(request, future))
        if not self._queued:
            self._queued = True
            task = loop.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    def _take(self) -> list[_Waiting[I, R]]:
        taken, self._waiting, self._queued = self._waiting, [], False
        return [w for w in taken if not w.future.cancelled()]

    async def _flush(self) -> None:
        batch: list[_Waiting[I, R]] | None = None

        async def op(conn: AsyncConnection) -> list[R]:
            nonlocal batch
            if batch is None:  # the first run takes; the writer's retry of it reuses
                batch = self._take()
            if not batch:
                return []
            return await self._run_many(conn, [w.request for w in batch])

        try:
            answers = await self._write(op)
        except Exception as exc:
            if batch is None:  # never ran (the writer is stopped)
                batch = self._take()
            if len(batch) == 1:
                _fail(batch[0].future, exc)
            else:
                await self._one_by_one(batch)
            return
        assert batch is not None
        self.operations += 1
        self.requests += len(batch)
        for waiting, answer in zip(batch, answers, strict=True):
            _resolve(waiting.future, answer)

    async def _one_by_one(self, batch: list[_Waiting[I, R]]) -> None:
        for waiting in batch:

            async def alone(conn: AsyncConnection, request: I = waiting.request) -> list[R]:
                return await self._run_many(conn, [request])

            try:
                [answer] = await self._write(alone)
            except Exception as exc:
                _fail(waiting.future, exc)
            else:
                _resolve(waiting.future, answer)


def _resolve(future: asyncio.Future[R], value: R) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


__all__ = ["Coalescer", "RunMany", "own_writer", "wants_own_writer"]
