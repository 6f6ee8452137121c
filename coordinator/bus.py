"""In-process job event bus: SSE streams, hub cancel notices and dispatcher wake-ups.

Events are small JSON-able dicts with at least `type` and `job_id`:
`{"type": "status", "job_id", "status", "progress", ...}`, `{"type": "progress", ...}`,
`{"type": "cancel", "job_id", "miner_id"}`.

On PostgreSQL several coordinator processes share one queue: `attach_postgres` LISTENs on
`ait_jobs` (wake-ups) and `ait_events` (job events), and `publish`/`wake` also NOTIFY, so a
job submitted on one process is dispatched by another and its events reach every SSE stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import orjson

from protocol.waits import wait_event

log = logging.getLogger(__name__)

WAKE_CHANNEL = "ait_jobs"
EVENTS_CHANNEL = "ait_events"
SUBSCRIPTION_QUEUE = 256  # events kept per slow subscriber before the oldest are dropped
MAX_NOTIFY_BYTES = 7000  # PostgreSQL's NOTIFY payload limit is 8000 bytes
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 10.0


# Key of the committed job object in a locally delivered event (never sent to other
# processes; they read the job themselves).
JOB_SNAPSHOT = "_job"
# Key of the job's owner (its client address) in an event sent to other processes, when
# the publisher knew the job: the receiving bus offers it to that client's streams only.
JOB_OWNER = "_owner"


# Subscriptions that are not to one job or one client's jobs: every event (an admin's
# stream), or the cancel notices only (the hub's).
EVERY = "every"
CANCELS = "cancels"
Index = dict[str | None, set["Subscription"]]


class Subscription:
    """A bounded queue of the events of one job, one client's jobs, or a kind (`EVERY`,
    `CANCELS`): `index[key]` of the bus holds it while subscribed. With `statuses`, only
    status events of jobs entering one of them are kept, and progress events only when
    `running` is one (progress is what a running job reports)."""

    def __init__(
        self,
        index: Index,
        key: str | None,
        queue_size: int,
        statuses: frozenset[str] | None = None,
    ) -> None:
        self._index = index
        self._key = key
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._statuses = statuses
        self._progress = statuses is None or "running" in statuses
        self.dropped = 0  # events dropped so far because the subscriber fell behind

    def _put(self, event: dict[str, Any]) -> None:
        # Left out before it is queued: a stream that waits for ends only would otherwise
        # format and send every job's queued and running views as well (round 25).
        statuses = self._statuses
        if statuses is not None:
            kind = event.get("type")
            if kind == "status" and event.get("status") not in statuses:
                return
            if kind == "progress" and not self._progress:
                return
        if self._queue.full():  # keep the newest: a stream wants the latest state
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self, wait_seconds: float | None = None) -> dict[str, Any] | None:
        """The next event, or None after `wait_seconds`."""
        try:
            async with asyncio.timeout(wait_seconds):  # not wait_for: see protocol/waits.py
                return await self._queue.get()
        except TimeoutError:
            return None

    def take_ready(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` events already waiting, without waiting for more."""
        ready: list[dict[str, Any]] = []
        while len(ready) < limit and not self._queue.empty():
            ready.append(self._queue.get_nowait())
        return ready

    def close(self) -> None:
        subs = self._index.get(self._key)
        if subs is not None:
            subs.discard(self)
            if not subs:
                del self._index[self._key]


class JobBus:
    def __init__(self) -> None:
        # An event is offered to the subscriptions it concerns only: a client's stream of
        # its jobs does not wake for every other client's job (docs/benchmarks.md, round 20).
        self._by_job: Index = {}
        self._by_owner: Index = {}  # client address -> streams of that client's jobs
        self._by_kind: Index = {}  # EVERY, CANCELS
        self._wake = asyncio.Event()
        self._origin = f"{os.getpid()}:{id(self)}"
        # How this process's own events begin (orjson keeps the key order of `publish`):
        # PostgreSQL echoes every NOTIFY to its sender too, and these are not parsed.
        self._own_events = orjson.dumps({"origin": self._origin})[:-1].decode() + ","
        self._pg: Any = None  # asyncpg connection when attached
        self._pg_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # NOTIFY tasks kept alive until done
        # NOTIFYs waiting for the connection, (channel, payload) in publishing order: one
        # statement sends all that wait (a commit publishes an event per job it settled).
        self._outgoing: list[tuple[str, str]] = []
        self._sending = False
        self._dsn = ""
        self._closing = False
        self._wake_notify_pending = False
        self._reconnect_task: asyncio.Task[None] | None = None

    # -- events ---------------------------------------------------------------------------
    def publish(self, job_id: str, event: dict[str, Any], *, job: object = None) -> None:
        """Deliver to local subscribers now; NOTIFY other processes when on PostgreSQL.
        `job`: the job as this change committed it; local subscribers get it under
        `JOB_SNAPSHOT` (so a stream need not read it back), other processes do not."""
        event = {**event, "job_id": job_id}
        owner = getattr(job, "client_address", None)
        self._deliver(event if job is None else {**event, JOB_SNAPSHOT: job}, owner)
        if self._pg is not None:
            remote = event if owner is None else {**event, JOB_OWNER: owner}
            payload = orjson.dumps({"origin": self._origin, "event": remote}).decode()
            if len(payload) <= MAX_NOTIFY_BYTES:
                self._spawn_notify(EVENTS_CHANNEL, payload)

    def _deliver(self, event: dict[str, Any], owner: object) -> None:
        # No copy of a set while offering: `_put` never (un)subscribes anyone.
        by_job, by_kind = self._by_job, self._by_kind
        if by_job:
            for sub in by_job.get(event.get("job_id"), ()):
                sub._put(event)
        for sub in by_kind.get(EVERY, ()):
            sub._put(event)
        if event.get("type") == "cancel":  # for miners, not for clients' streams
            for sub in by_kind.get(CANCELS, ()):
                sub._put(event)
        elif isinstance(owner, str):
            for sub in self._by_owner.get(owner, ()):
                sub._put(event)
        else:  # published without its job: every client's stream checks it itself
            for subs in self._by_owner.values():
                for sub in subs:
                    sub._put(event)

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        job_id: str | None,
        queue_size: int = SUBSCRIPTION_QUEUE,
        *,
        owner: str | None = None,
        statuses: frozenset[str] | None = None,
    ) -> AsyncIterator[Subscription]:
        """Events of one job; with `job_id=None`, the status and progress events of every
        job of `owner` (a client's stream of all its jobs), or every event when `owner` is
        None too (an admin's stream); at most `queue_size` kept unread. `statuses`: keep
        only the status events of jobs entering one of them (see `Subscription`)."""
        if job_id is not None:
            index, key = self._by_job, job_id
        elif owner is not None:
            index, key = self._by_owner, owner
        else:
            index, key = self._by_kind, EVERY
        async with self._subscribed(index, key, queue_size, statuses) as sub:
            yield sub

    def subscribe_cancels(
        self, queue_size: int = SUBSCRIPTION_QUEUE
    ) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """The cancel notices only (the hub's: which miner to tell to stop)."""
        return self._subscribed(self._by_kind, CANCELS, queue_size)

    @contextlib.asynccontextmanager
    async def _subscribed(
        self,
        index: Index,
        key: str | None,
        queue_size: int,
        statuses: frozenset[str] | None = None,
    ) -> AsyncIterator[Subscription]:
        sub = Subscription(index, key, queue_size, statuses)
        index.setdefault(key, set()).add(sub)
        try:
            yield sub
        finally:
            sub.close()

    # -- wake-ups -------------------------------------------------------------------------
    def wake(self) -> None:
        """Tell the dispatcher there is new work (a new job, a freed lease, a new miner)."""
        self._wake.set()
        if self._pg is not None and not self._wake_notify_pending:
            # Coalesced: while one wake-up NOTIFY waits to be sent, more add nothing.
            self._wake_notify_pending = True
            self._spawn_notify(WAKE_CHANNEL, self._origin)

    async def wait_for_work(self, wait_seconds: float) -> bool:
        """Sleep until `wake()` or `wait_seconds`; True when woken. Clears the flag.
        (protocol.waits: the dispatcher, cancelled at shutdown just as a wake-up came, must
        still end.)"""
        woken = await wait_event(self._wake, wait_seconds)
        self._wake.clear()
        return woken

    # -- PostgreSQL LISTEN/NOTIFY ---------------------------------------------------------
    async def attach_postgres(self, dsn: str) -> None:
        """LISTEN on a dedicated connection; it is re-made (capped back-off) if it drops."""
        self._dsn = dsn
        await self._connect()

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(WAKE_CHANNEL, self._on_notify)
        await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_terminated)
        self._pg = conn

    def _on_terminated(self, conn: Any) -> None:
        if self._closing or conn is not self._pg:
            return
        self._pg = None  # NOTIFYs pause; SSE streams and the dispatcher re-read meanwhile
        log.warning("LISTEN connection lost; reconnecting")
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = RECONNECT_FIRST_S
        while not self._closing:
            try:
                await self._connect()
            except Exception as exc:
                log.warning("LISTEN reconnect failed: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            self._wake.set()  # work may have arrived while deaf
            return

    async def close(self) -> None:
        self._closing = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tasks:  # NOTIFYs in flight finish before their connection closes
            await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._pg_lock:
            if self._pg is not None:
                pg, self._pg = self._pg, None
                with contextlib.suppress(Exception):
                    await pg.close()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        if channel == WAKE_CHANNEL:
            if payload != self._origin:
                self._wake.set()
            return
        if payload.startswith(self._own_events):
            return
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        event = message.get("event")
        if message.get("origin") != self._origin and isinstance(event, dict):
            self._deliver(event, event.get(JOB_OWNER))

    def _spawn_notify(self, channel: str, payload: str) -> None:
        self._outgoing.append((channel, payload))
        if self._sending:
            return  # the sender takes it with the next statement
        self._sending = True
        task = asyncio.get_running_loop().create_task(self._send_notifies())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_notifies(self) -> None:
        """Send what waits in `_outgoing` as one statement, then what came meanwhile, until
        nothing waits. A NOTIFY each cost a round trip to the server (three or four a
        job); within one statement PostgreSQL delivers them in order (docs/benchmarks.md,
        round 13). What a failed statement held is lost, as a failed NOTIFY was; what
        came meanwhile still goes."""
        try:
            while self._outgoing:
                batch, self._outgoing = self._outgoing, []
                try:
                    await self._notify_all(batch)
                except Exception:
                    log.warning("NOTIFY of %d messages failed", len(batch), exc_info=True)
        finally:
            self._sending = False

    async def _notify_all(self, batch: list[tuple[str, str]]) -> None:
        async with self._pg_lock:
            if any(channel == WAKE_CHANNEL for channel, _ in batch):
                self._wake_notify_pending = False
            if self._pg is not None and not self._closing:
                channels, payloads = zip(*batch, strict=True)
                await self._pg.execute(_NOTIFY_ALL, list(channels), list(payloads))


# Notifications sent in one transaction are delivered in the order sent (identical ones,
# same channel and payload, only once); unnest keeps the arrays' order.
_NOTIFY_ALL = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)"
