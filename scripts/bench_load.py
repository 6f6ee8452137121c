"""The bench's load generators: clients that submit jobs and wait for them to end.

`Load` is one job a request (`POST /v1/jobs`) and one event stream a job; `BatchLoad` sends
`size` jobs a request (`POST /v1/jobs/batch`) and follows them all on one stream of all the
client's jobs (`GET /v1/jobs/events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
import orjson

TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
BATCH_WAIT_S = 120.0  # a closed-loop batch not ended by then counts as an error


class Load:
    """One job a request; each job's end read off its own event stream."""

    jobs_per_request = 1

    def __init__(self, session: aiohttp.ClientSession, url: str, job: dict[str, Any]) -> None:
        self.session, self.url = session, url
        self.payload = json.dumps(job).encode()
        self.job_ids: list[str] = []
        self.requests = 0  # submit requests sent
        self.errors: dict[str, int] = {}
        self.client_latency_ms: list[float] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def _error(self, kind: str, count: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + count

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def submit(self) -> str | None:
        self.requests += 1
        try:
            async with self.session.post(self.url + "/v1/jobs", data=self.payload) as response:
                body = await response.read()
                if response.status != 201:
                    self._error(f"submit_{response.status}")
                    return None
        except aiohttp.ClientError as exc:
            self._error(type(exc).__name__)
            return None
        job_id: str = json.loads(body)["job_id"]
        self.job_ids.append(job_id)
        return job_id

    async def wait_terminal(self, job_id: str) -> None:
        async with self.session.get(f"{self.url}/v1/jobs/{job_id}/events") as response:
            async for line in response.content:
                if line.startswith(b"data:") and any(
                    f'"{status}"'.encode() in line for status in TERMINAL
                ):
                    return

    async def round_trip(self) -> bool:
        """Closed loop: submit, then wait for the end; False when the submit failed."""
        started = time.perf_counter()
        job_id = await self.submit()
        if job_id is None:
            return False
        try:
            await self.wait_terminal(job_id)
        except aiohttp.ClientError as exc:
            self._error(type(exc).__name__)
        self.client_latency_ms.append((time.perf_counter() - started) * 1000)
        return True

    def send(self, count: int) -> None:
        """Open loop: submit `count` jobs now, without waiting for them."""
        for _ in range(count):
            self._spawn(self.submit())

    async def stop(self) -> None:
        """Wait for submits in flight; stop watching."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def closed_loop(self, concurrency: int, until: float) -> None:
        async def worker() -> None:
            while time.monotonic() < until:
                if not await self.round_trip():
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def open_loop(self, rate: float, until: float) -> None:
        """Open loop: `rate` jobs/s, sent as soon as a whole request's worth is due (sending
        what was due each millisecond made every batch a batch of one)."""
        start, sent = time.monotonic(), 0
        while time.monotonic() < until:
            due = int((time.monotonic() - start) * rate) - sent
            due -= due % self.jobs_per_request
            if due > 0:
                self.send(due)
                sent += due
            await asyncio.sleep(0.001)


class BatchLoad(Load):
    """`size` jobs a request; every end read off one stream of all the client's jobs."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        job: dict[str, Any],
        size: int,
        *,
        streams: aiohttp.ClientSession | None = None,
        ends_only: bool = True,
    ) -> None:
        super().__init__(session, url, job)
        self.job, self.jobs_per_request = job, size
        self.streams = streams or session  # where the stream of all the jobs is read
        # What a client that waits for its jobs to end asks for: their ends, not every
        # queued and running view (`--stream-events all`: every event, as before round 25).
        ends = ",".join(sorted(TERMINAL))
        self.events_path = f"/v1/jobs/events?status={ends}" if ends_only else "/v1/jobs/events"
        self._ends: dict[str, asyncio.Future[None]] = {}  # awaited or already ended
        self._watcher: asyncio.Task[None] | None = None

    def _end(self, job_id: str) -> asyncio.Future[None]:
        future = self._ends.get(job_id)
        if future is None:
            future = self._ends[job_id] = asyncio.get_running_loop().create_future()
        return future

    async def closed_loop(self, concurrency: int, until: float) -> None:
        subscribed = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.create_task(self._watch(subscribed))
        await subscribed  # events of every job submitted from now on reach the stream
        await super().closed_loop(concurrency, until)

    async def _watch(self, subscribed: asyncio.Future[None]) -> None:
        async with self.streams.get(self.url + self.events_path) as response:
            subscribed.set_result(None)
            if response.status != 200:  # no ends will come: every batch times out, counted
                self._error(f"events_{response.status}")
                return
            name = b""
            async for line in response.content:
                if line.startswith(b"event: "):
                    name = line[7:].strip()
                elif line.startswith(b"data: ") and name == b"status":
                    data = orjson.loads(line[6:])
                    if data["status"] in TERMINAL:
                        ended = self._end(data["job_id"])
                        if not ended.done():  # a repeated end must not stop the watcher
                            ended.set_result(None)
                elif line.startswith(b"data: ") and name == b"dropped":
                    self._error("events_dropped", orjson.loads(line[6:])["events"])

    async def stop(self) -> None:
        await super().stop()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def submit_batch(self, count: int) -> list[str]:
        self.requests += 1
        body = orjson.dumps({"jobs": [self.job] * count})
        try:
            async with self.session.post(self.url + "/v1/jobs/batch", data=body) as response:
                answer = await response.read()
                if response.status != 201:
                    self._error(f"submit_{response.status}", count)
                    return []
        except aiohttp.ClientError as exc:
            self._error(type(exc).__name__, count)
            return []
        ids = [job["job_id"] for job in orjson.loads(answer)["jobs"]]
        self.job_ids.extend(ids)
        return ids

    async def round_trip(self) -> bool:
        started = time.perf_counter()
        ids = await self.submit_batch(self.jobs_per_request)
        if not ids:
            return False
        try:  # asyncio.timeout, not wait_for: 3.11's wait_for can drop a cancel (waits.py)
            async with asyncio.timeout(BATCH_WAIT_S):
                await asyncio.gather(*(self._end(i) for i in ids))
        except TimeoutError:
            self._error("batch_not_ended")
        ended_ms = (time.perf_counter() - started) * 1000
        self.client_latency_ms.extend([ended_ms] * len(ids))
        for job_id in ids:
            self._ends.pop(job_id, None)
        return True

    def send(self, count: int) -> None:
        for first in range(0, count, self.jobs_per_request):
            self._spawn(self.submit_batch(min(self.jobs_per_request, count - first)))
