"""Shared fixtures (docs/architecture.md, "Tests").

- `db_url`: parametrised `sqlite` (a file under tmp_path) and `postgresql` (a fresh
  database `ait_test_<random>` on 127.0.0.1:5432, dropped afterwards). Without a server the
  PostgreSQL case skips, unless `AIT_REQUIRE_POSTGRES=1`, which makes it fail.
- `coordinator`: a real `create_app` served on 127.0.0.1, port 0, over `db_url`. Rate limits
  are off in it (tests make many calls); `coordinator_factory(**settings)` starts one with
  other settings (e.g. the default rate limits).
- `client_key`, `admin_key`: `KeyInfo(api_key, key_id, role, address)` made on it.
- `db`: a `Database` opened (migrated, writer started) on `db_url`, closed afterwards.

The classes and helpers the fixtures use live in `ait_harness` (import them from there).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ait_harness import (
    NO_RATE_LIMITS,
    Coordinator,
    CoordinatorFactory,
    KeyInfo,
    drop_template,
    fresh_postgres_database,
    require_postgres,
    serve,
)

from coordinator.app import create_app
from coordinator.db.database import Database
from coordinator.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def _drop_template() -> Iterator[None]:
    yield
    drop_template()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'coordinator.db'}"
        return
    require_postgres()
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await Database.open(db_url)
    yield database
    await database.close()


@pytest.fixture
async def coordinator_factory(db_url: str, tmp_path: Path) -> AsyncIterator[CoordinatorFactory]:
    """`await coordinator_factory(**settings_fields)`: start another coordinator on the same
    database (own data dir unless given); all are stopped at the end of the test."""
    stack = contextlib.AsyncExitStack()
    count = 0

    async def start(**overrides: Any) -> Coordinator:
        nonlocal count
        count += 1
        values: dict[str, Any] = {
            "data_dir": tmp_path / f"data{count}",
            "db": db_url,
            "rate_limits": NO_RATE_LIMITS,
        }
        values.update(overrides)
        settings = Settings(**values)

        app = create_app(settings)
        url = await stack.enter_async_context(serve(app))
        return Coordinator(url, settings, app)

    async with stack:
        yield start


@pytest.fixture
async def coordinator(coordinator_factory: CoordinatorFactory) -> Coordinator:
    return await coordinator_factory()


@pytest.fixture
async def client_key(coordinator: Coordinator) -> KeyInfo:
    return await coordinator.create_key("client", name="test client")


@pytest.fixture
async def admin_key(coordinator: Coordinator) -> KeyInfo:
    return await coordinator.create_key("admin", name="test admin")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
