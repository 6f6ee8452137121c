"""The miner hub: websocket endpoint, in-process registry, dispatcher and lease reaper.

``setup_hub(app)`` is all the coordinator's ``create_app`` calls; see docs/protocol.md.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from coordinator.appkeys import ADMISSION_DISPATCH, METRICS, MINER_REGISTRY
from coordinator.hub.admission import AdmissionDispatch
from coordinator.hub.dispatcher import Hub, hub_tasks
from coordinator.hub.registry import MAX_REMEMBERED, MinerConn, MinerRegistry
from coordinator.hub.verifier import SIGNATURE_VERIFIER, SignatureVerifier
from coordinator.hub.ws import miner_ws
from coordinator.service import lifecycle
from coordinator.service.core import Core
from protocol.messages import Advert, ProtocolError

log = logging.getLogger(__name__)

__all__ = ["HUB", "Hub", "MinerConn", "MinerRegistry", "setup_hub"]

HUB: web.AppKey[Hub] = web.AppKey("ait_hub", Hub)


async def remember_registered(app: web.Application, registry: MinerRegistry) -> None:
    """Load the adverts of miners seen before, so prices (escrow estimates) and
    never-matches reasons survive a coordinator restart until the miners reconnect."""
    rows = await lifecycle.list_registered_miners(Core.of(app))
    for row in sorted(rows, key=lambda r: r["last_seen_ms"])[-MAX_REMEMBERED:]:
        try:
            advert = Advert.from_json(row["advert"], "stored advert")
        except ProtocolError as exc:
            log.warning("ignoring the stored advert of %s: %s", row["miner_id"], exc)
            continue
        registry.remember(row["miner_id"], advert)
        track = registry.track(row["miner_id"])  # counts survive the restart too
        track.completed = max(track.completed, int(row.get("jobs_completed") or 0))
        track.failed = max(track.failed, int(row.get("jobs_failed") or 0))


def setup_hub(app: web.Application) -> None:
    """Register the miner registry (``app[MINER_REGISTRY]``), ``GET /v1/miners/ws`` and the
    dispatcher / lease reaper / cancel listener tasks (started with the app)."""
    registry = MinerRegistry()
    hub = Hub(app, registry)
    app[MINER_REGISTRY] = registry
    app[HUB] = hub
    verifier = SignatureVerifier(app[METRICS])
    app[SIGNATURE_VERIFIER] = verifier
    admission = AdmissionDispatch(hub)
    app[ADMISSION_DISPATCH] = admission
    app.router.add_get("/v1/miners/ws", miner_ws)

    async def run_hub(app: web.Application) -> AsyncIterator[None]:
        await remember_registered(app, registry)
        async for _ in hub_tasks(app, hub, admission.sent):
            yield

    app.cleanup_ctx.append(run_hub)

    async def close_miners(app: web.Application) -> None:
        # on_shutdown runs before the server waits for handlers: end the socket loops now.
        for conn in registry.connections():
            await conn.close(1001, "coordinator shutting down")

    app.on_shutdown.append(close_miners)

    async def close_verifier(app: web.Application) -> None:
        verifier.close()

    app.on_cleanup.append(close_verifier)
