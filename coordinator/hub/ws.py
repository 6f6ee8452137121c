"""``GET /v1/miners/ws``: authenticate a miner daemon and serve its frames.

Handshake: the upgrade request carries a miner-role API key (``Authorization: Bearer`` or
``X-Api-Key``); the hub sends ``challenge``; the miner answers ``hello`` signed over
``auth_payload(nonce)`` with its own key (its miner id derives from that key); the hub
answers ``welcome``. After that every frame is handled in order on this connection.

A dropped connection keeps its leases until they expire: a daemon that reconnects within
``lease_seconds`` resumes its jobs; one that does not has them re-queued by the reaper.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSMsgType, web
from sqlalchemy.exc import DBAPIError

from coordinator.api.middleware import api_key_of
from coordinator.appkeys import METRICS, MINER_REGISTRY
from coordinator.errors import Forbidden, Unauthorized
from coordinator.hub.registry import MinerConn, MinerRegistry
from coordinator.hub.results import check_result
from coordinator.hub.verifier import SIGNATURE_VERIFIER, Verdicts
from coordinator.service import lifecycle
from coordinator.service.core import Core
from coordinator.service.keys import authenticate
from coordinator.service.lifecycle import MinerIdentity, Outcome
from protocol.frames import BATCH_SUBPROTOCOL, FrameSender, decode_frame
from protocol.ids import new_nonce
from protocol.keys import miner_id_from_public_key, verify_hex
from protocol.limits import HANDSHAKE_TIMEOUT_S, MAX_MESSAGE_BYTES
from protocol.messages import (
    Ack,
    Cancel,
    Challenge,
    Error,
    Failed,
    Heartbeat,
    Hello,
    Message,
    Progress,
    ProtocolError,
    Reject,
    Release,
    Result,
    Resume,
    Welcome,
    auth_payload,
    decode,
    encode,
)

log = logging.getLogger(__name__)

CLOSE_AUTH = 4401
CLOSE_PROTOCOL = 4400
CLOSE_REPLACED = 4409
MAX_BAD_FRAMES = 10  # a miner sending garbage is cut off after this many
DB_RETRIES = 3  # transient database errors while handling one frame
MAX_MINERS_PER_KEY = 1024  # connected daemons one miner API key may serve at once
MAX_PROGRESS_PER_S = 10  # per job; the daemon sends at most 4
MAX_RESULTS_IN_FLIGHT = 256  # per connection; more waits (back-pressure on the socket)
# A miner that leaves its frames unread this long (plus the frame's size at the slowest rate
# we wait for) is cut off: a send to it would block the task sending (the dispatcher, a
# settlement) and, through it, every other miner. A large input on a slow link still gets
# through: 16 MiB may take 256 s.
SEND_TIMEOUT_S = 10.0
MIN_SEND_BYTES_PER_S = 64 * 1024
# Bytes queued for a miner beyond which it gets no new assignment (aiohttp's writer
# blocks above 64 KiB); a reading miner's queue empties within a round trip.
MAX_SEND_BACKLOG = 64 * 1024


def registry_of(app: web.Application) -> MinerRegistry:
    registry = app[MINER_REGISTRY]
    assert isinstance(registry, MinerRegistry)
    return registry


async def miner_ws(request: web.Request) -> web.StreamResponse:
    core = Core.of(request.app)
    api_key = api_key_of(request)
    if api_key is None:
        raise Unauthorized("a miner API key is required (Authorization: Bearer or X-Api-Key)")
    key = await authenticate(core.db, api_key)
    if key is None:
        raise Unauthorized("unknown or revoked API key")
    if key.role != "miner":
        raise Forbidden(f"a {key.role} key cannot connect as a miner; use a miner key")

    # No permessage-deflate: frames are small JSON, and compressing each one cost the
    # coordinator about 4% of its CPU under load (docs/benchmarks.md). A miner that offers
    # the batch subprotocol gets it (protocol/frames.py); others get one message a frame.
    ws = web.WebSocketResponse(
        max_msg_size=MAX_MESSAGE_BYTES,
        heartbeat=20,
        compress=False,
        protocols=(BATCH_SUBPROTOCOL,),
    )
    await ws.prepare(request)
    session = Session(request.app, core, ws, key.key_id, key.address, request.transport)
    try:
        await session.run()
    finally:
        session.detach()
        await session.close(1000, "")
    return ws


class Session:
    """One miner connection: handshake, then frame handling until it closes."""

    def __init__(
        self,
        app: web.Application,
        core: Core,
        ws: web.WebSocketResponse,
        key_id: str,
        address: str,
        transport: asyncio.Transport | None,
    ) -> None:
        self.app = app
        self.core = core
        self.ws = ws
        self.transport = transport
        self.key_id = key_id
        self.address = address
        self.registry = registry_of(app)
        self.conn: MinerConn | None = None
        self.metrics = app[METRICS]
        self.frames = FrameSender(
            self._write_frame,
            batches=ws.ws_protocol == BATCH_SUBPROTOCOL,
            written=self._count_out,
        )
        self._bad_frames = 0
        self._last_beat = 0.0
        self._last_progress: dict[str, float] = {}
        # Results settle concurrently (they share group commits); one task per job id.
        self._results: dict[str, asyncio.Task[None]] = {}
        self.verifier = app[SIGNATURE_VERIFIER]
        self._verdicts = Verdicts()  # signatures verified with their frame's (hub/verifier.py)
        self._result_slots = asyncio.Semaphore(MAX_RESULTS_IN_FLIGHT)

    # -- plumbing ---------------------------------------------------------------------
    async def send(self, msg: Message) -> bool:
        """True once the frame holding `msg` is written; False when the miner is gone or
        was cut off for leaving its frames unread (see `_write_frame`)."""
        if self.ws.closed:
            return False
        try:
            await self.frames.send_text(encode(msg))
        except (ConnectionError, RuntimeError) as exc:
            log.info("send to miner failed: %s", exc)
            return False
        return True

    async def _write_frame(self, frame: str) -> None:
        """Write one frame (up to MAX_BATCH_MESSAGES messages) within the time its size
        allows, else cut the miner off: the frame's senders, and those queued behind it,
        hear ConnectionResetError. One deadline a frame, not one a message: entering and
        leaving `asyncio.timeout` cost ~7 us, twice a job (round 19)."""
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S + len(frame) / MIN_SEND_BYTES_PER_S):
                await self.ws.send_str(frame)
        except TimeoutError:
            self._cut_off("left its frames unread")
            raise ConnectionResetError("the miner left its frames unread") from None

    def _count_out(self, messages: int) -> None:
        self.metrics.miner_frames["out"] += 1
        self.metrics.miner_messages["out"] += messages

    def writable(self) -> bool:
        """False while frames pile up unread: such a miner gets no new assignment."""
        transport = self.transport
        if self.ws.closed or transport is None or transport.is_closing():
            return False
        return transport.get_write_buffer_size() < MAX_SEND_BACKLOG

    def _cut_off(self, why: str) -> None:
        # Aborted, not closed: a close frame would queue behind the unread ones.
        miner_id = self.conn.miner_id if self.conn is not None else None
        log.warning("miner %s; disconnecting", why, extra={"miner_id": miner_id})
        if self.transport is not None:
            self.transport.abort()

    async def close(self, code: int = CLOSE_REPLACED, reason: str = "") -> None:
        """A close frame and the miner's answer, within the send time-out; a miner whose
        frames pile up unread is cut off at once (its close frame would wait behind them)."""
        if self.ws.closed:
            return
        if not self.writable():
            self._cut_off(f"left its frames unread at close ({reason or code})")
            return
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode()[:120])
        except TimeoutError:
            self._cut_off(f"did not answer the close ({reason or code})")

    async def _refuse(self, code: str, message: str, close_code: int) -> None:
        await self.send(Error(code, message))
        await self.close(close_code, code)

    def detach(self) -> None:
        if self.conn is not None:
            self.registry.remove(self.conn)
            log.info("miner disconnected", extra={"miner_id": self.conn.miner_id})

    # -- handshake --------------------------------------------------------------------
    async def _hello(self) -> Hello | None:
        nonce = new_nonce()
        await self.send(Challenge(nonce))
        try:
            frame = await self.ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            await self._refuse("timeout", "no hello within the handshake timeout", CLOSE_PROTOCOL)
            return None
        if frame.type != WSMsgType.TEXT:
            return None
        try:
            hello = decode(frame.data)
        except ProtocolError as exc:
            await self._refuse("bad-frame", str(exc), CLOSE_PROTOCOL)
            return None
        if not isinstance(hello, Hello):
            await self._refuse("bad-frame", f"expected hello, got {hello.TYPE}", CLOSE_PROTOCOL)
            return None
        if not verify_hex(hello.public_key, hello.signature, auth_payload(nonce)):
            await self._refuse(
                "bad-signature", "hello signature does not verify over the nonce", CLOSE_AUTH
            )
            return None
        return hello

    async def run(self) -> None:
        hello = await self._hello()
        if hello is None:
            return
        miner_id = miner_id_from_public_key(bytes.fromhex(hello.public_key))
        conn = MinerConn(
            miner_id=miner_id,
            public_key=hello.public_key,
            address=self.address,
            key_id=self.key_id,
            advert=hello.advert,
            send=self.send,
            close=self.close,
            writable=self.writable,
        )
        others = self.registry.reserve(self.key_id, miner_id, MAX_MINERS_PER_KEY)
        if others is not None:
            await self._refuse(
                "too-many-miners",
                f"this API key already serves {others} connected miners"
                f" (limit {MAX_MINERS_PER_KEY})",
                CLOSE_PROTOCOL,
            )
            return
        try:
            await lifecycle.upsert_miner(self.core, self.identity(conn), hello.advert.to_json())
        except BaseException:
            self.registry.unreserve(self.key_id, miner_id)
            raise
        old = self.registry.add(conn)
        if old is not None:
            # The same daemon came back before we noticed the old socket die.
            await old.close(CLOSE_REPLACED, "replaced by a newer connection")
        self.conn = conn
        settings = self.core.settings
        await self.send(
            Welcome(miner_id, self.address, settings.lease_seconds, settings.heartbeat_seconds)
        )
        log.info(
            "miner connected",
            extra={"miner_id": miner_id, "address": self.address, "advert": hello.advert.to_json()},
        )
        self.core.bus.wake()
        async for frame in self.ws:
            if frame.type == WSMsgType.ERROR:
                log.info("miner socket error: %s", self.ws.exception())
                continue
            try:
                if frame.type != WSMsgType.TEXT:  # binary counts as bad, so it is cut off too
                    raise ProtocolError("frames are UTF-8 JSON text; binary frames are refused")
                messages = decode_frame(frame.data, batches=self.frames.batches)
            except ProtocolError as exc:
                messages = [exc]
            self.metrics.miner_frames["in"] += 1
            self.metrics.miner_messages["in"] += len(messages)
            await self.verifier.verify_frame(messages, self._verdicts)
            for msg in messages:
                await self._dispatch(conn, msg)
        # Settlements already under way finish before the session ends.
        await asyncio.gather(*self._results.values(), return_exceptions=True)

    async def _dispatch(self, conn: MinerConn, msg: Message | ProtocolError) -> None:
        """One message of a frame, in frame order (results settle on tasks of their own)."""
        if isinstance(msg, ProtocolError):
            self._bad_frames += 1
            await self.send(Error("bad-frame", str(msg)))
            if self._bad_frames >= MAX_BAD_FRAMES:
                await self.close(CLOSE_PROTOCOL, "too many bad frames")
            return
        if isinstance(msg, Result):
            await self._spawn_result(conn, msg)
            return
        named: tuple[str, ...] = (msg.job_id,) if isinstance(msg, Failed) else ()
        if isinstance(msg, Release):
            named = msg.job_ids
        pending = [self._results[j] for j in named if j in self._results]
        if pending:  # keep frame order for a job whose result is still settling
            await asyncio.gather(*pending, return_exceptions=True)
        await self._handle_logged(conn, msg)

    async def _handle_logged(self, conn: MinerConn, msg: Message) -> None:
        for attempt in range(DB_RETRIES + 1):
            try:
                await self.handle(conn, msg)
                return
            except DBAPIError as exc:
                # A deadlock or lock time-out between coordinators sharing one database:
                # every handler is idempotent (the lifecycle answers EXISTS / STALE), so
                # handling the frame again is safe.
                if attempt == DB_RETRIES:
                    log.exception("database kept failing on %s from %s", msg.TYPE, conn.miner_id)
                    break
                log.warning("database error on %s, retrying: %s", msg.TYPE, exc.orig)
                await asyncio.sleep(0.05 * 2**attempt)
            except Exception:  # a bug on our side must not take the hub down
                log.exception("error handling %s from %s", msg.TYPE, conn.miner_id)
                break
        await self.send(Error("internal", f"coordinator failed to handle {msg.TYPE}"))

    async def _spawn_result(self, conn: MinerConn, msg: Result) -> None:
        """Settle a result on its own task, so one miner's results share a group commit
        instead of waiting for a commit each; a second result for the same job waits for
        the first (a retry then answers 'duplicate', as when handled in order)."""
        await self._result_slots.acquire()
        previous = self._results.get(msg.job_id)

        async def settle() -> None:
            try:
                if previous is not None:
                    await asyncio.gather(previous, return_exceptions=True)
                await self._handle_logged(conn, msg)
            finally:
                self._result_slots.release()
                if self._results.get(msg.job_id) is task:
                    del self._results[msg.job_id]

        task = asyncio.get_running_loop().create_task(settle())
        self._results[msg.job_id] = task

    def _progress_due(self, job_id: str) -> bool:
        now = time.monotonic()
        if now - self._last_progress.get(job_id, 0.0) < 1 / MAX_PROGRESS_PER_S:
            return False
        if len(self._last_progress) > 4 * MAX_RESULTS_IN_FLIGHT:
            self._last_progress.clear()  # bounded: old jobs' entries go
        self._last_progress[job_id] = now
        return True

    def identity(self, conn: MinerConn) -> MinerIdentity:
        return MinerIdentity(conn.miner_id, conn.address, conn.public_key)

    # -- frames -----------------------------------------------------------------------
    async def handle(self, conn: MinerConn, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            conn.utilisation = msg.utilisation
            now = time.monotonic()
            # Renewals are database writes: a miner beating faster than asked gets no more.
            if now - self._last_beat >= self.core.settings.heartbeat_seconds / 4:
                self._last_beat = now
                await self._renew(conn, msg.running)
        elif isinstance(msg, Resume):
            await self._resume(conn, msg)
        elif isinstance(msg, Progress):
            if not self._progress_due(msg.job_id):
                return  # more than MAX_PROGRESS_PER_S for one job: dropped, it is informational
            job = await lifecycle.record_progress(
                self.core, msg.job_id, conn.miner_id, msg.percent, msg.message
            )
            if job is None:
                await self._lost(conn, msg.job_id)
        elif isinstance(msg, Result):
            await self._result(conn, msg)
        elif isinstance(msg, Failed):
            await self._failed(conn, msg)
        elif isinstance(msg, Release):
            await self._release(conn, msg)
        else:
            await self.send(Error("bad-frame", f"{msg.TYPE} is not a miner message"))

    async def _renew(self, conn: MinerConn, running: tuple[str, ...]) -> None:
        for job_id in running:
            if job_id in self._results:
                continue  # its result is settling right now: the answer will tell the miner
            job = await lifecycle.renew_lease(self.core, job_id, conn.miner_id)
            if job is None:
                await self._lost(conn, job_id)
            else:
                conn.running.add(job_id)

    async def _resume(self, conn: MinerConn, msg: Resume) -> None:
        """Keep the leases the miner still works on; give back those it forgot (it was
        restarted), so they need not wait for their lease to run out. A forgotten job is a
        crashed attempt, counted like an expired lease: a job that keeps killing its miner
        fails after max_attempts instead of bouncing forever."""
        await self._renew(conn, msg.running)
        keep = set(msg.running) | set(msg.pending_results) | conn.running
        for job in await lifecycle.running_jobs_of(self.core, conn.miner_id):
            if job.job_id not in keep:
                limit = self.core.settings.max_attempts
                await lifecycle.fail_job(
                    self.core,
                    job.job_id,
                    conn.miner_id,
                    f"miner {conn.miner_id} restarted without it "
                    f"(attempt {job.attempts} of {limit})",
                )
        conn.resumed = True
        self.core.bus.wake()

    async def _lost(self, conn: MinerConn, job_id: str) -> None:
        """The miner works on a job it no longer holds: tell it to stop."""
        conn.running.discard(job_id)
        await self.send(Cancel(job_id, "lease lost: the job ended or went to another miner"))

    async def _result(self, conn: MinerConn, msg: Result) -> None:
        signature_valid = self._verdicts.take(msg)
        if signature_valid is None:
            self.metrics.signatures_verified["event_loop"] += 1
        problem = check_result(msg, conn, signature_valid)
        if problem is None:
            output = msg.output_bytes()
            change = await lifecycle.complete_job(
                self.core,
                msg.job_id,
                conn.miner_id,
                receipt=msg.receipt,
                signature={k: str(v) for k, v in msg.signature.items()},
                output=output,
                content_type=msg.content_type,
                filename=msg.filename,
                summary=msg.summary,
                leased=conn.running.lease_of(msg.job_id),
            )
            if change.outcome == Outcome.OK:
                conn.running.discard(msg.job_id)
                self.registry.track(conn.miner_id).completed += 1
                await self.send(Ack(msg.job_id))
                self.core.bus.wake()
                log.info("job completed", extra={"job_id": msg.job_id, "miner_id": conn.miner_id})
                return
            if change.outcome == Outcome.EXISTS or (
                change.job is not None and change.job.status == "completed"
            ):
                conn.running.discard(msg.job_id)
                await self.send(Reject(msg.job_id, "duplicate", "already settled; paid once"))
                return
            if change.outcome == Outcome.STALE:
                conn.running.discard(msg.job_id)
                await self.send(Reject(msg.job_id, "lease-lost", change.detail or "not leased"))
                return
            problem = ("not-bound", change.detail or "receipt does not match the job")
        code, reason = problem
        log.warning(
            "result rejected: %s", reason, extra={"job_id": msg.job_id, "miner_id": conn.miner_id}
        )
        self.registry.track(conn.miner_id).rejected += 1
        change = await lifecycle.fail_job(
            self.core, msg.job_id, conn.miner_id, f"result rejected ({code}): {reason}"
        )
        if change.outcome == Outcome.OK:
            conn.running.discard(msg.job_id)
            self.core.bus.wake()
        await self.send(Reject(msg.job_id, code, reason))

    async def _failed(self, conn: MinerConn, msg: Failed) -> None:
        change = await lifecycle.fail_job(
            self.core, msg.job_id, conn.miner_id, msg.error, retryable=msg.retryable
        )
        conn.running.discard(msg.job_id)
        if change.outcome == Outcome.OK:
            self.registry.track(conn.miner_id).failed += 1
            self.core.bus.wake()

    async def _release(self, conn: MinerConn, msg: Release) -> None:
        conn.draining = msg.draining
        for job_id in msg.job_ids:
            await lifecycle.release_job(
                self.core, job_id, conn.miner_id, f"given back by {conn.miner_id}: {msg.reason}"
            )
            conn.running.discard(job_id)
        self.core.bus.wake()
