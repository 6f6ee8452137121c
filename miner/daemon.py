"""The miner daemon: stays connected (forever, with back-off), takes pushed jobs, reports.

One ``MinerDaemon`` per process (or per in-process test miner). Per connection: a reader
loop handles coordinator frames; a heartbeat task renews leases every ``heartbeat_s``
(never blocked by job code, which runs in threads); results wait in an outbox until the
coordinator acknowledges or rejects them, so a network cut loses nothing: after the next
welcome the daemon sends ``resume`` and re-sends what is pending. A lease that could not
be renewed for ``lease_s`` (connection down) is treated as lost: the job is stopped here,
because the coordinator gives it to another miner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

import miner
from miner import gpu
from miner.config import MinerSettings
from miner.connection import Backoff, HandshakeError, open_session, ws_url
from miner.identity import Identity, load_identity
from miner.runtime.registry import ModelCache
from miner.worker import Worker
from protocol.frames import BATCH_SUBPROTOCOL, FrameSender, decode_frame
from protocol.messages import (
    Ack,
    Advert,
    Assign,
    Cancel,
    Error,
    Failed,
    Heartbeat,
    Message,
    ModelOffer,
    Progress,
    ProtocolError,
    Reject,
    Release,
    Result,
    Resume,
    Welcome,
    encode,
)
from protocol.waits import wait_event

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # at most this often per job; the latest value wins
RESULT_RETRY_S = 5.0  # re-send a result the coordinator has not answered after this long
SCRATCH_PRUNE_INTERVAL_S = 600.0  # look for scratch dirs no job can come back for


class MinerDaemon:
    def __init__(
        self,
        settings: MinerSettings,
        *,
        identity: Identity | None = None,
        probe: gpu.Probe | None = None,
        cache: ModelCache | None = None,
    ) -> None:
        self.settings = settings
        self.identity = identity or load_identity(settings.key_file)
        self.probe = probe or gpu.probe(settings.device)
        self.url = ws_url(settings.coordinator)
        self.worker = Worker(
            self.identity,
            settings.models,
            self.probe.runtime_device,
            settings.work_dir,
            settings.max_concurrency,
            cache,
        )
        self.outbox: dict[str, Result | Failed] = {}  # until ack/reject (results) or sent
        self.welcome: Welcome | None = None
        self.connected = asyncio.Event()
        self.completed: list[str] = []  # job ids whose result was acknowledged
        self.rejected: dict[str, str] = {}  # job id -> reject code
        self.sessions = 0  # connections that reached welcome
        self._ws: ClientConnection | None = None
        self._frames: FrameSender | None = None  # writes to _ws (batched where negotiated)
        self._stop = asyncio.Event()
        self._draining = False
        self._last_renewed = time.monotonic()
        self._progress: dict[str, tuple[int, str | None]] = {}
        self._progress_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()  # a job finished or a result was answered
        # Jobs started and not yet through _finished. The worker lets go of a job when its
        # task ends; the task's done callback (_finished, which puts the outcome in the
        # outbox) runs a loop turn later. In between, the job is in neither `running` nor
        # the outbox, and a drain that looked then stopped the daemon and lost the result.
        self._in_flight: set[str] = set()
        self._sent_at: dict[str, float] = {}  # job id -> when its result was last sent

    @property
    def miner_id(self) -> str:
        return self.identity.miner_id

    @property
    def batch_frames(self) -> bool:
        """Whether the current connection negotiated batch frames (protocol/frames.py)."""
        return self._frames is not None and self._frames.batches

    def advert(self) -> Advert:
        return Advert(
            gpus=self.probe.gpus(),
            models=tuple(
                ModelOffer(m.name, m.runtime, m.unit, m.price_uait_per_unit)
                for m in self.settings.models
            ),
            max_concurrency=self.settings.max_concurrency,
            software_version=f"ait-miner/{miner.__version__}",
        )

    # -- lifecycle --------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, reconnect with capped back-off; returns once ``stop`` is done."""
        backoff = Backoff()
        watchdog = self._spawn(self._lease_watchdog())
        pruner = self._spawn(self._prune_scratch_forever())
        try:
            while not self._stop.is_set():
                try:
                    ws, welcome = await open_session(
                        self.url, self.settings.api_key, self.identity, self.advert()
                    )
                except HandshakeError as exc:
                    delay = backoff.cap_s if exc.permanent else backoff.next_delay()
                    log.error("%s; retrying in %.1fs", exc, delay)
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as e:
                    delay = backoff.next_delay()
                    log.warning("cannot reach %s (%s); retrying in %.1fs", self.url, e, delay)
                except ProtocolError as exc:
                    delay = backoff.next_delay()
                    log.warning("bad frame during handshake (%s); retrying in %.1fs", exc, delay)
                else:
                    backoff.reset()
                    try:
                        await self._session(ws, welcome)
                    except ConnectionClosed as exc:
                        log.warning("connection lost (%s)", exc)
                    except Exception:  # a bug here must not end the daemon: reconnect
                        log.exception("session failed; reconnecting")
                    finally:
                        self._ws = None
                        self.connected.clear()
                        await ws.close()
                    delay = backoff.next_delay()
                if not self._stop.is_set():
                    await wait_event(self._stop, delay)
        finally:
            watchdog.cancel()
            pruner.cancel()
            self.worker.shutdown()

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop taking jobs, let running ones finish for ``grace_s``, give the rest back."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._draining = True
        await self._send(Release((), "shutdown", True))
        deadline = time.monotonic() + grace
        while (left := deadline - time.monotonic()) > 0 and (self._in_flight or self._unacked()):
            self._changed.clear()
            await wait_event(self._changed, min(left, 0.5))
        given_back = self.worker.cancel_all("miner shutting down")
        if given_back:
            await self._send(Release(tuple(given_back), "shutdown", True))
            log.info("gave back %d leases", len(given_back))
        self.stop()

    def stop(self) -> None:
        """Leave at once (the coordinator's lease reaper re-queues what we held)."""
        self._stop.set()
        if self._ws is not None:
            self._spawn(self._ws.close())

    def _unacked(self) -> bool:
        return any(isinstance(m, Result) for m in self.outbox.values()) and self._ws is not None

    # -- one connection ---------------------------------------------------------------
    async def _session(self, ws: ClientConnection, welcome: Welcome) -> None:
        batches = ws.subprotocol == BATCH_SUBPROTOCOL
        frames = FrameSender(ws.send, batches=batches)
        self._ws, self._frames, self.welcome = ws, frames, welcome
        self.sessions += 1
        self._last_renewed = time.monotonic()
        log.info(
            "connected",
            extra={
                "miner_id": welcome.miner_id,
                "address": welcome.address,
                "url": self.url,
                "batch_frames": batches,
            },
        )
        await frames.send(Resume(tuple(self._in_flight), tuple(self.outbox)))
        if self._draining:
            await frames.send(Release((), "shutdown", True))
        for job_id, pending in list(self.outbox.items()):
            await frames.send_text(_wire_text(pending))
            self._sent_at[job_id] = time.monotonic()
            if isinstance(pending, Failed):
                self.outbox.pop(job_id, None)
        self.connected.set()
        beats = self._spawn(self._heartbeats(frames, welcome.heartbeat_s))
        try:
            async for frame in ws:
                try:
                    messages = decode_frame(frame, batches=batches)
                except ProtocolError as exc:
                    messages = [exc]
                for msg in messages:
                    if isinstance(msg, ProtocolError):
                        log.warning("ignoring a bad frame from the coordinator: %s", msg)
                        continue
                    await self._handle(msg)
        finally:
            beats.cancel()
            self._frames = None

    async def _handle(self, msg: Message) -> None:
        self._changed.set()
        if isinstance(msg, Assign):
            await self._on_assign(msg)
        elif isinstance(msg, Cancel):
            # A result already sent stays until it is answered (ack, or reject if too late).
            if isinstance(self.outbox.get(msg.job_id), Failed):
                self.outbox.pop(msg.job_id, None)
            if self.worker.cancel(msg.job_id, msg.reason):
                log.info("job cancelled: %s", msg.reason, extra={"job_id": msg.job_id})
        elif isinstance(msg, Ack):
            self._sent_at.pop(msg.job_id, None)
            if isinstance(self.outbox.pop(msg.job_id, None), Result):
                self.completed.append(msg.job_id)
                self.worker.discard_job_dir(msg.job_id)
                log.info("result accepted", extra={"job_id": msg.job_id})
        elif isinstance(msg, Reject):
            self._sent_at.pop(msg.job_id, None)
            self.outbox.pop(msg.job_id, None)
            self.rejected[msg.job_id] = msg.code
            level = logging.INFO if msg.code == "duplicate" else logging.WARNING
            log.log(level, "result rejected (%s): %s", msg.code, msg.reason)
        elif isinstance(msg, Error):
            log.error("coordinator error %s: %s", msg.code, msg.message)
        else:
            log.warning("unexpected %s message from the coordinator", msg.TYPE)

    async def _on_assign(self, a: Assign) -> None:
        if a.job_id in self._in_flight:
            return  # a re-sent assignment of a job we already run: keep running it
        if self._draining or len(self._in_flight) >= self.settings.max_concurrency:
            await self._send(Failed(a.job_id, "miner has no free slot (draining or full)", True))
            return
        log.info("job assigned", extra={"job_id": a.job_id, "model": a.model, "attempt": a.attempt})
        task = self.worker.start(a, self._address, self._on_progress)
        self._in_flight.add(a.job_id)
        task.add_done_callback(lambda t: self._finished(a.job_id, t))

    def _address(self) -> str:
        assert self.welcome is not None, "jobs only arrive after a welcome"
        return self.welcome.address

    def _finished(self, job_id: str, task: asyncio.Task[Result | Failed | None]) -> None:
        self._in_flight.discard(job_id)
        self._progress.pop(job_id, None)
        self._changed.set()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("job wrapper crashed", exc_info=exc, extra={"job_id": job_id})
            outcome: Result | Failed | None = Failed(job_id, f"miner error: {exc}", True)
        else:
            outcome = task.result()
        if outcome is None:
            return
        self.outbox[job_id] = outcome
        self._spawn(self._deliver(job_id))

    async def _deliver(self, job_id: str) -> None:
        msg = self.outbox.get(job_id)
        if msg is not None and await self._send(msg):
            self._sent_at[job_id] = time.monotonic()
            if isinstance(msg, Failed):
                self.outbox.pop(job_id, None)

    # -- renewals ---------------------------------------------------------------------
    async def _heartbeats(self, frames: FrameSender, interval_s: float) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader loop notices and reconnects
            await self._beat(frames, interval_s)

    async def _beat(self, frames: FrameSender, interval_s: float) -> None:
        while True:
            util = await asyncio.to_thread(gpu.utilisation, self.probe)
            # A job whose result is not answered yet is still ours: keep its lease alive.
            pending = tuple(j for j, m in self.outbox.items() if isinstance(m, Result))
            held = tuple(self._in_flight) + tuple(j for j in pending if j not in self._in_flight)
            await frames.send(Heartbeat(held, util))
            self._last_renewed = time.monotonic()
            await self._resend_unanswered(frames, pending)
            await asyncio.sleep(interval_s)

    async def _resend_unanswered(self, frames: FrameSender, pending: tuple[str, ...]) -> None:
        """A result the coordinator did not answer (it failed to settle it, or the answer
        was lost) is sent again; a settled one then answers ``duplicate``."""
        now = time.monotonic()
        for job_id in pending:
            msg = self.outbox.get(job_id)
            if msg is not None and now - self._sent_at.get(job_id, now) > RESULT_RETRY_S:
                log.info("re-sending an unanswered result", extra={"job_id": job_id})
                await frames.send_text(_wire_text(msg))
                self._sent_at[job_id] = now

    def _on_progress(self, job_id: str, percent: int, message: str | None) -> None:
        if job_id not in self.worker.running:
            return
        self._progress[job_id] = (percent, message)
        if self._progress_task is None or self._progress_task.done():
            self._progress_task = self._spawn(self._flush_progress())

    async def _flush_progress(self) -> None:
        while self._progress:
            pending, self._progress = self._progress, {}
            for job_id, (percent, message) in pending.items():
                if job_id in self.worker.running:
                    await self._send(Progress(job_id, percent, message))
            await asyncio.sleep(PROGRESS_INTERVAL_S)

    async def _prune_scratch_forever(self) -> None:
        while True:
            try:
                removed = await self.worker.prune_job_dirs()
            except OSError as exc:  # an unreadable work dir must not end the daemon
                log.warning("cannot prune scratch dirs in %s: %s", self.worker.work_dir, exc)
            else:
                if removed:
                    log.info("removed %d stale scratch dirs", len(removed))
            await asyncio.sleep(SCRATCH_PRUNE_INTERVAL_S)

    async def _lease_watchdog(self) -> None:
        """While disconnected, stop jobs whose lease can no longer have been renewed."""
        while True:
            await asyncio.sleep(0.25)
            lease_s = self.welcome.lease_s if self.welcome else None
            if self._ws is not None or lease_s is None or not self.worker.running:
                continue
            if time.monotonic() - self._last_renewed > lease_s:
                lost = self.worker.cancel_all("lease lost while disconnected")
                log.warning("lease expired while disconnected; stopped %d jobs", len(lost))

    # -- helpers ----------------------------------------------------------------------
    async def _send(self, msg: Message) -> bool:
        frames = self._frames
        if frames is None:
            return False
        try:
            await frames.send_text(_wire_text(msg))
        except ConnectionClosed:
            return False
        if isinstance(msg, Progress):
            self._last_renewed = time.monotonic()
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _wire_text(msg: Message) -> str:
    """The frame text of a message this daemon sends. A result comes from the worker,
    which encoded it whole but its output (our own base64) before handing it over, so it
    is not parsed back a second time (that was ~6% of a busy miner's CPU)."""
    return encode(msg, validate=not isinstance(msg, Result))
