"""What the tests share besides fixtures: the PostgreSQL test server, a running
coordinator's handle (`Coordinator`, `KeyInfo`) and how one is served. Test modules
import these from here, not from `conftest`: with several conftest.py files in the tree
(tests/reliability has its own) the module named `conftest` is whichever was loaded last,
so `from conftest import ...` broke when the reliability suite was collected first.
The fixtures themselves stay in tests/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import text

from chain import store as ledger_store
from chain.ledger import Result
from coordinator.appkeys import DATABASE
from coordinator.db.database import Database
from coordinator.domain.jobs import Job, JobStatus, Priority, Requirements
from coordinator.service.keys import create_key
from coordinator.settings import RateLimit, Settings
from protocol.money import ait_to_uait
from protocol.timefmt import now_ms

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
NO_RATE_LIMITS = MappingProxyType({role: RateLimit(0, 0) for role in ("client", "miner", "admin")})


def _postgres_reachable() -> bool:
    with contextlib.suppress(OSError), socket.create_connection((PG_HOST, PG_PORT), timeout=1):
        return True
    return False


def require_postgres() -> None:
    """Skip (or fail, when AIT_REQUIRE_POSTGRES=1) without a PostgreSQL server."""
    if _postgres_reachable():
        return
    message = f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}"
    if os.environ.get("AIT_REQUIRE_POSTGRES") == "1":
        pytest.fail(message + " and AIT_REQUIRE_POSTGRES=1")
    pytest.skip(message)


_template: list[str] = []  # this session's migrated template database, made on first use


async def _migrated_template(admin: Any) -> str:
    """A database with the current schema, copied for each test (CREATE DATABASE ...
    TEMPLATE is much cheaper than migrating every fresh database)."""
    if not _template:
        name = f"ait_tpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        db = await Database.open(
            f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}", start_writer=False
        )
        await db.close()
        _template.append(name)
    return _template[0]


def drop_template() -> None:
    """Drop this session's template database, if one was made (end of the session)."""
    if not _template:
        return
    import asyncpg

    async def drop() -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{_template[0]}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new database (current schema, no rows) for one test; its SQLAlchemy URL.
    Dropped afterwards."""
    import asyncpg

    name = f"ait_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        template = await _migrated_template(admin)
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class LoopTurns:
    """`async with LoopTurns() as turns:` counts the event loop's turns while the block
    runs (`turns.during`): a task that only yields runs once a turn, so a block that holds
    the loop leaves it at zero or one."""

    def __init__(self) -> None:
        self.during = 0
        self._count = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self._count += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> LoopTurns:
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0)  # the ticker is running
        self._count = 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.during = self._count
        assert self._task is not None
        self._task.cancel()


async def query_plan(conn: Any, statement: Any, *, as_is: bool = False) -> str:
    """The database's plan for `statement`, one line a step; on PostgreSQL with table
    scans and sorts priced out, so a Sort or Seq Scan in it means no index could serve
    it (call it inside a transaction: the settings are `SET LOCAL`). `as_is`: the plan
    PostgreSQL picks by itself (with sorts priced out it may take an index it would not)."""
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "postgresql":
        if not as_is:
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            await conn.execute(text("SET LOCAL enable_sort = off"))
        rows = await conn.execute(text("EXPLAIN " + sql))
        return "\n".join(str(row[0]) for row in rows)
    rows = await conn.execute(text("EXPLAIN QUERY PLAN " + sql))
    return "\n".join(str(row[3]) for row in rows)


@dataclass(frozen=True)
class KeyInfo:
    api_key: str
    key_id: str
    role: str
    address: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class Coordinator:
    """A running coordinator: `.url`, `.settings`, `.app`, `.db` and helpers."""

    url: str
    settings: Settings
    app: web.Application
    _keys: list[KeyInfo] = field(default_factory=list)

    @property
    def db(self) -> Database:
        return self.app[DATABASE]

    async def create_key(
        self, role: str = "client", name: str | None = None, address: str | None = None
    ) -> KeyInfo:
        api_key, record, _ = await create_key(self.db, role, name, address, self.settings.data_dir)
        info = KeyInfo(api_key, record.key_id, record.role, record.address)
        self._keys.append(info)
        return info

    async def fund(
        self, address: str, amount_ait: float | int | str, chain_id: str | None = None
    ) -> None:
        """Mint AIT to `address` directly in the ledger (any chain, faucet or not)."""
        chain = chain_id or self.settings.default_chain
        amount = ait_to_uait(amount_ait)
        transfer_id = f"mint:{uuid.uuid4().hex}"

        async def op(conn: Any) -> Result:
            return await ledger_store.mint(conn, transfer_id, chain, address, amount, now_ms())

        result = await self.db.write(op)
        assert result == Result.CREATED, result

    async def balance_uait(self, address: str, chain_id: str | None = None) -> tuple[int, int]:
        """(available, held) in micro-AIT."""
        async with self.db.read() as conn:
            bal = await ledger_store.balance(conn, chain_id or self.settings.default_chain, address)
        return bal.available_uait, bal.held_uait


CoordinatorFactory = Callable[..., Awaitable[Coordinator]]


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


__all__ = [
    "NO_RATE_LIMITS",
    "PG_ADMIN_DSN",
    "Coordinator",
    "CoordinatorFactory",
    "KeyInfo",
    "fresh_postgres_database",
    "require_postgres",
    "serve",
]


def sample_job() -> Job:
    """A queued job with every field set, as a unit test starts from."""
    return Job(
        job_id="job_1",
        client_address="ait1" + "0" * 40,
        key_id="key_1",
        chain_id="ait-devnet",
        model="echo",
        status=JobStatus.QUEUED,
        priority=Priority.NORMAL,
        requirements=Requirements(gpu_type="a100", min_vram_gb=40.0),
        params={"temperature": 0.5},
        output_config={},
        input_json='{"text":"hi"}',
        input_file_id=None,
        input_sha256="ab" * 32,
        input_bytes=13,
        timeout_seconds=60,
        deadline_ms=61_000,
        max_price_uait=None,
        estimated_cost_uait=5,
        estimated_units=5,
        estimated_time_seconds=1,
        created_at_ms=1_000,
        updated_at_ms=1_000,
        extra={"units_by_unit": {"token": 5}},
    )
