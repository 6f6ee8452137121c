"""The sealer's loop: every `block_interval_seconds`, each configured chain's pending
transfers sealed into blocks (coordinator.service.blocks), drafted on the event loop or,
once blocks get big, in a helper process (coordinator.service.seal_worker).

The helper is started the first time a block of HELPER_MIN_ENTRIES or more is drafted
(about 40 settled jobs a second): below that a draft takes well under a millisecond and a
process is not worth its memory, so the demo, the tests and a quiet coordinator never
start one. Once it is ready it drafts every block; while it starts, and for
HELPER_RETRY_S after it fails, blocks are drafted on the event loop as before. Only for a
SQLite file: ':memory:' cannot be shared with another process, and on PostgreSQL the
coordinator is not what bounds throughput (docs/benchmarks.md) and several coordinator
processes already share the sealing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from coordinator import appkeys
from coordinator.db.database import Database
from coordinator.metrics import Metrics
from coordinator.service.blocks import Draft, ForeignSigner, draft_block, seal_pending
from coordinator.service.seal_worker import SealWorker, SealWorkerFailed
from protocol.keys import PrivateKey, load_or_create_key_file
from protocol.timefmt import now_ms

log = logging.getLogger(__name__)

HELPER_MIN_ENTRIES = 125  # a block this big starts the helper (one page of pending reads)
HELPER_RETRY_S = 60.0  # after the helper fails, blocks are drafted here this long
LOG_EVERY_MS = 60_000


class Sealer:
    """Drafts blocks for seal_pending, here or in the helper; owns the helper."""

    def __init__(
        self,
        db: Database,
        key: PrivateKey,
        metrics: Metrics,
        *,
        helper_min_entries: int = HELPER_MIN_ENTRIES,
    ) -> None:
        self._db = db
        self._key = key
        self._metrics = metrics
        self._helper_min_entries = helper_min_entries
        self._helper: SealWorker | None = None
        self._starting: asyncio.Task[SealWorker] | None = None
        self._retry_at = 0.0
        self._can_help = db.sqlite_path is not None

    @property
    def helper(self) -> SealWorker | None:
        """The helper process, once started and ready."""
        return self._ready_helper()

    async def draft(self, db: Database, chain_id: str, key: PrivateKey, now: int) -> Draft | None:
        """A `blocks.Drafter`: the helper's draft when it is ready, else draft_block's."""
        helper = self._ready_helper()
        if helper is not None:
            try:
                draft = await helper.draft(chain_id, now)
            except SealWorkerFailed as exc:
                log.error("drafting on the event loop for now: %s", exc)
                await self._drop_helper()
            else:
                if draft is not None:
                    self._metrics.blocks_drafted["helper"] += 1
                return draft
        draft = await draft_block(db, chain_id, key, now)
        if draft is not None:
            self._metrics.blocks_drafted["event_loop"] += 1
            if len(draft.seqs) >= self._helper_min_entries:
                self._start_helper()
        return draft

    def _ready_helper(self) -> SealWorker | None:
        starting = self._starting
        if starting is not None and starting.done():
            self._starting = None
            failure = "cancelled" if starting.cancelled() else starting.exception()
            if failure is not None:
                log.error("the seal helper did not start: %s", failure)
                self._retry_at = asyncio.get_running_loop().time() + HELPER_RETRY_S
            else:
                self._helper = starting.result()
                log.info("seal helper ready", extra={"pid": self._helper.pid})
        return self._helper

    def _start_helper(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._can_help or self._helper or self._starting or loop.time() < self._retry_at:
            return
        self._starting = loop.create_task(
            SealWorker.start(self._db.url, self._key), name="seal-helper-start"
        )

    async def _drop_helper(self) -> None:
        helper, self._helper = self._helper, None
        self._retry_at = asyncio.get_running_loop().time() + HELPER_RETRY_S
        if helper is not None:
            await helper.close()

    async def close(self) -> None:
        """Stop the helper (and a start in progress)."""
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, SealWorkerFailed):
                started = await starting
                await started.close()
        helper, self._helper = self._helper, None
        if helper is not None:
            await helper.close()


def _coordinator_key(app: web.Application) -> PrivateKey:
    if appkeys.COORDINATOR_KEY in app:
        return app[appkeys.COORDINATOR_KEY]
    # create_app normally loads it; a bare app still gets the data dir's key.
    return load_or_create_key_file(app[appkeys.SETTINGS].key_path)


async def _sealer_loop(app: web.Application, sealer: Sealer) -> None:
    settings = app[appkeys.SETTINGS]
    db = app[appkeys.DATABASE]
    key = _coordinator_key(app)
    chain_ids = [chain.id for chain in settings.chains]
    loop = asyncio.get_running_loop()
    last_logged_ms: dict[str, int] = {}

    def throttled(chain_id: str) -> bool:
        # A lasting fault (database down, foreign key) is logged once a minute, not per round.
        if now_ms() - last_logged_ms.get(chain_id, -LOG_EVERY_MS) < LOG_EVERY_MS:
            return True
        last_logged_ms[chain_id] = now_ms()
        return False

    next_round = loop.time()
    while True:
        # Fixed rate: a slow round does not push every later block back.
        next_round += settings.block_interval_seconds
        await asyncio.sleep(max(0.0, next_round - loop.time()))
        next_round = max(next_round, loop.time() - settings.block_interval_seconds)
        for chain_id in chain_ids:
            try:
                await seal_pending(db, chain_id, key, sealer.draft)
            except asyncio.CancelledError:
                raise
            except ForeignSigner as exc:
                if not throttled(chain_id):
                    log.error("not sealing: %s", exc, extra={"chain_id": chain_id})
            except Exception:
                # A lost connection or a full writer must not stop sealing for good.
                if not throttled(chain_id):
                    log.exception("block sealing failed", extra={"chain_id": chain_id})


async def _sealer_ctx(app: web.Application) -> AsyncIterator[None]:
    metrics = app.get(appkeys.METRICS) or Metrics()
    sealer = Sealer(app[appkeys.DATABASE], _coordinator_key(app), metrics)
    task = asyncio.get_running_loop().create_task(_sealer_loop(app, sealer), name="block-sealer")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await sealer.close()


def setup_sealer(app: web.Application) -> None:
    """Register the block sealer as a background task of the app (cleanup_ctx)."""
    app.cleanup_ctx.append(_sealer_ctx)
