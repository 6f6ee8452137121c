"""Schema migrations on real databases: a database of an earlier schema version is brought
up to date by `Database.open`, keeping its rows, and works afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ait_harness import fresh_postgres_database
from sqlalchemy import inspect, select, text

from chain import store
from chain.ledger import Result
from coordinator.db.database import Database
from coordinator.db.migrations import LATEST_VERSION
from coordinator.db.schema import ledger_transfers, receipts, schema_version
from coordinator.service.blocks import seal_pending
from protocol.keys import address_of, generate_private_key
from protocol.timefmt import now_ms

CHAIN = "ait-devnet"
COORDINATOR = generate_private_key()

# What version 1 had where later versions differ (the upgrade test rebuilds it from the
# current schema): version 6's queue, lease and deadline indexes held every job; version
# 5's index of running jobs by miner did not exist; version 4's
# credit index of transfers held every credit; version 3's read indexes of jobs were one,
# a client's jobs by time; version 2's unsealed transfers were an index of every transfer
# by (chain, block), and receipts were stamped too.
_BACK_TO_VERSION_1 = (
    "DROP INDEX ix_jobs_queue",
    "DROP INDEX ix_jobs_lease",
    "DROP INDEX ix_jobs_deadline",
    "CREATE INDEX ix_jobs_queue ON jobs (status, priority DESC, created_at_ms)",
    "CREATE INDEX ix_jobs_lease ON jobs (status, lease_expires_at_ms)",
    "CREATE INDEX ix_jobs_deadline ON jobs (status, deadline_ms)",
    "DROP INDEX ix_jobs_running_miner",
    "DROP INDEX ix_jobs_client_created",
    "DROP INDEX ix_jobs_client_status",
    "DROP INDEX ix_jobs_created",
    "DROP INDEX ix_jobs_status_created",
    "DROP INDEX ix_jobs_model_completed",
    "CREATE INDEX ix_jobs_client_created ON jobs (client_address, created_at_ms)",
    "DROP INDEX ix_transfers_credit",
    "CREATE INDEX ix_transfers_credit ON ledger_transfers (credit_address, chain_id)",
    "DROP INDEX ix_transfers_unsealed",
    "CREATE INDEX ix_transfers_unsealed ON ledger_transfers (chain_id, block_height)",
    "ALTER TABLE receipts ADD COLUMN block_height BIGINT",
    "DELETE FROM schema_version WHERE version > 1",
)


async def _execute(db: Database, *statements: str) -> None:
    async def op(conn: Any) -> None:
        for statement in statements:
            await conn.execute(text(statement))

    await db.write(op)


def _plain(index: Any) -> str:
    # A partial index's WHERE comes back as a TextClause, which compares by identity.
    options = {key: str(value) for key, value in index.get("dialect_options", {}).items()}
    return repr({**index, "dialect_options": options})


def _shape(sync_conn: Any) -> dict[str, Any]:
    """Every table's columns, indexes and unique constraints as the server reports them."""
    inspector = inspect(sync_conn)
    return {
        table: {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ),
            "indexes": sorted(_plain(index) for index in inspector.get_indexes(table)),
            "unique": sorted(
                inspector.get_unique_constraints(table), key=lambda u: str(u.get("name"))
            ),
        }
        for table in sorted(inspector.get_table_names())
    }


@contextlib.asynccontextmanager
async def _fresh_database_like(url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A new database of the current schema on the same server as `url`."""
    if url.startswith("postgresql"):
        async with fresh_postgres_database() as fresh:
            yield fresh
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"


async def _shape_of(url: str) -> dict[str, Any]:
    db = await Database.open(url, start_writer=False)
    try:
        async with db.read() as conn:
            shape: dict[str, Any] = await conn.run_sync(_shape)
            return shape
    finally:
        await db.close()


async def test_version_1_database_is_upgraded_keeping_its_rows(db_url: str, tmp_path: Path) -> None:
    db = await Database.open(db_url)
    try:
        await _execute(db, *_BACK_TO_VERSION_1)
        address = address_of(generate_private_key())

        async def rows(conn: Any) -> Result:
            await conn.execute(
                receipts.insert().values(
                    job_id="job_old", chain_id=CHAIN, receipt="{}", signature="{}", created_at_ms=1
                )
            )
            return await store.mint(conn, "mint:old", CHAIN, address, 5_000, now_ms())

        assert await db.write(rows) == Result.CREATED
    finally:
        await db.close()

    db = await Database.open(db_url)  # migrates
    try:
        async with db.read() as conn:
            versions = sorted((await conn.execute(select(schema_version.c.version))).scalars())
            kept = (await conn.execute(select(receipts.c.job_id))).scalars().all()
        assert versions == list(range(1, LATEST_VERSION + 1))
        assert kept == ["job_old"]
        # The sealer works on the migrated database: the old transfer gets its block.
        assert await seal_pending(db, CHAIN, COORDINATOR) == 1
        async with db.read() as conn:
            height = await conn.scalar(
                select(ledger_transfers.c.block_height).where(
                    ledger_transfers.c.transfer_id == "mint:old"
                )
            )
        assert height == 0
    finally:
        await db.close()
    # The upgraded database has exactly the shape a new one gets.
    async with _fresh_database_like(db_url, tmp_path) as fresh_url:
        assert await _shape_of(db_url) == await _shape_of(fresh_url)


async def test_current_database_opens_without_migrating_again(db_url: str) -> None:
    await (await Database.open(db_url)).close()  # new (SQLite) or from the template
    db = await Database.open(db_url)  # already current: nothing to run or record
    try:
        async with db.read() as conn:
            versions = (await conn.execute(select(schema_version.c.version))).scalars().all()
        assert sorted(versions) == list(range(1, LATEST_VERSION + 1))
    finally:
        await db.close()
