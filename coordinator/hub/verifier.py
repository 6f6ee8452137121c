"""A frame's result signatures verified together, on a thread of their own.

Under load a miner's batch frame carries ~35 results, and verifying their Ed25519
signatures on the event loop took ~9% of its samples (docs/benchmarks.md, round 28).
Where ``protocol.ed25519_batch`` is available, a frame with at least ``MIN_BATCH``
results has its signatures verified by one call on the ``ait-verify`` thread, which
holds the GIL only to start and to finish: the loop serves everything else meanwhile,
and the frame's messages are then handled in order, each result with its verdict.
Smaller frames, frames whose results cannot be put in a batch (malformed hex, no
canonical form: the inline check names the fault), and every frame where the extension
is unavailable, verify on the loop as before; a thread verifying one signature a call
costs the loop more than that (protocol/ed25519_batch.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from chain.receipts import signed_item
from coordinator.metrics import Metrics
from protocol import ed25519_batch
from protocol.keys import SignedItem
from protocol.messages import Message, ProtocolError, Result

log = logging.getLogger(__name__)

MIN_BATCH = 4  # results a frame; below it the hand-off to the thread costs more than it saves


class Verdicts:
    """Signature verdicts waiting for their results' checks. Each is kept with its
    message, so the id it is filed under cannot name another message meanwhile."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Result, bool]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, msg: Result, valid: bool) -> None:
        self._by_id[id(msg)] = (msg, valid)

    def take(self, msg: Result) -> bool | None:
        """The verdict on ``msg``'s signature, once; None when it was not verified ahead."""
        entry = self._by_id.pop(id(msg), None)
        if entry is None or entry[0] is not msg:
            return None
        return entry[1]


class SignatureVerifier:
    """The coordinator's ``ait-verify`` thread (started by the first batch)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.enabled = ed25519_batch.AVAILABLE
        if not self.enabled:
            log.info(
                "result signatures are verified on the event loop: %s",
                ed25519_batch.UNAVAILABLE_REASON,
            )
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    async def verify_frame(
        self, messages: Sequence[Message | ProtocolError], into: Verdicts
    ) -> None:
        """Verify the signatures of the frame's results in one batch, off the loop, and
        file each verdict in ``into``; does nothing for a frame below ``MIN_BATCH``."""
        if not self.enabled or self._closed:
            return
        batch: list[tuple[Result, SignedItem]] = []
        for msg in messages:
            if isinstance(msg, Result):
                item = signed_item(msg.receipt, msg.signature)
                if item is not None:
                    batch.append((msg, item))
        if len(batch) < MIN_BATCH:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="ait-verify")
        items = [item for _, item in batch]
        # No await since the _closed check: the pool cannot have been shut down.
        loop = asyncio.get_running_loop()
        verdicts = await loop.run_in_executor(self._pool, ed25519_batch.verify_many, items)
        for (msg, _), valid in zip(batch, verdicts, strict=True):
            into.add(msg, valid)
        self.metrics.signatures_verified["thread"] += len(batch)

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # a batch under way finishes; its session reads it


SIGNATURE_VERIFIER: web.AppKey[SignatureVerifier] = web.AppKey(
    "ait_signature_verifier", SignatureVerifier
)
