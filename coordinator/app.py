"""`create_app(settings)`: the coordinator's aiohttp application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from coordinator import identity
from coordinator.api import chain as chain_api
from coordinator.api import events as events_api
from coordinator.api import jobs as jobs_api
from coordinator.api import misc as misc_api
from coordinator.api import wallets as wallets_api
from coordinator.api.middleware import (
    RATE_LIMITER,
    auth_middleware,
    metrics_middleware,
)
from coordinator.appkeys import COORDINATOR_KEY, DATABASE, JOB_BUS, LOOP_LAG, METRICS, SETTINGS
from coordinator.bus import JobBus
from coordinator.db.database import Database
from coordinator.errors import problem_middleware
from coordinator.hub import setup_hub
from coordinator.loop_lag import LoopLag
from coordinator.metrics import Metrics
from coordinator.ratelimit import RateLimiter
from coordinator.service.sealer import setup_sealer
from coordinator.settings import Settings

log = logging.getLogger(__name__)


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    """Migrate and start the writer before the hub and sealer start; stop after them."""
    db = app[DATABASE]
    await db.start()
    bus = app[JOB_BUS]
    if db.is_postgres:
        await bus.attach_postgres(db.asyncpg_dsn)
    log.info("database ready", extra={"dialect": db.dialect})
    try:
        yield
    finally:
        await bus.close()
        await db.close()


async def _loop_lag_ctx(app: web.Application) -> AsyncIterator[None]:
    """Time the event loop's lag for /metrics while the app runs."""
    probe = app[LOOP_LAG]
    probe.start()
    try:
        yield
    finally:
        probe.stop()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[metrics_middleware, problem_middleware, auth_middleware],
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[JOB_BUS] = JobBus()
    app[RATE_LIMITER] = RateLimiter()
    app[COORDINATOR_KEY] = identity.load_or_create(settings.key_path)
    app[DATABASE] = Database.create(settings.db_url)
    app[LOOP_LAG] = LoopLag()
    app.cleanup_ctx.append(_database_ctx)  # first: everything below needs the database
    app.cleanup_ctx.append(_loop_lag_ctx)
    # Plain paths before parametrised ones (/v1/jobs/history before /v1/jobs/{job_id}).
    app.router.add_routes(events_api.routes)  # `/v1/jobs/events` before `/v1/jobs/{job_id}`
    app.router.add_routes(jobs_api.routes)
    app.router.add_routes(wallets_api.routes)
    app.router.add_routes(misc_api.routes)
    app.router.add_routes(chain_api.routes)
    setup_hub(app)
    setup_sealer(app)
    return app
