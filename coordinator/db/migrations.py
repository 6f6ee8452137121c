"""Versioned schema migrations, recorded in `schema_version`.

A new database gets the current tables of `schema.py` and every version stamped as applied
(like `alembic stamp head`). An existing database runs, in order, each migration newer than
its highest recorded version. To change the schema: edit `schema.py` *and* append a
`Migration` whose `apply` brings a database of the previous version to the new shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db import schema
from protocol.timefmt import now_ms

_PG_MIGRATION_LOCK = 0x41_49_54_01  # pg_advisory_xact_lock key: one migrator at a time


class SchemaError(RuntimeError):
    """This coordinator cannot use the database (its schema, or the library under it);
    the text says why in one sentence, which the CLIs print as it is."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[AsyncConnection], Awaitable[None]] | None  # None: only in create_all


async def _seal_by_payment(conn: AsyncConnection) -> None:
    """2: the unsealed-transfers index holds only unsealed rows, in `seq` order; receipts
    lose `block_height` (a receipt's block is its payment transfer's)."""
    await conn.execute(text("DROP INDEX ix_transfers_unsealed"))
    unsealed = next(i for i in schema.ledger_transfers.indexes if i.name == "ix_transfers_unsealed")
    await conn.run_sync(unsealed.create)
    await conn.execute(text("ALTER TABLE receipts DROP COLUMN block_height"))


# The jobs indexes that version 3 brought; the first replaces version 2's of that name.
_READ_INDEXES = (
    "ix_jobs_client_created",
    "ix_jobs_client_status",
    "ix_jobs_created",
    "ix_jobs_status_created",
    "ix_jobs_model_completed",
)


async def _read_indexes(conn: AsyncConnection) -> None:
    """3: job listings, histories and a model's latest completions are read off indexes
    that give their whole ORDER BY, instead of sorting every matching job."""
    await conn.execute(text("DROP INDEX ix_jobs_client_created"))
    for index in schema.jobs.indexes:
        if index.name in _READ_INDEXES:
            await conn.run_sync(index.create)


async def _credits_from_another(conn: AsyncConnection) -> None:
    """4: the credit index of transfers holds only credits from another address, so a
    wallet's history reads each side off an index instead of sorting both per page."""
    await conn.execute(text("DROP INDEX ix_transfers_credit"))
    credit = next(i for i in schema.ledger_transfers.indexes if i.name == "ix_transfers_credit")
    await conn.run_sync(credit.create)


async def _running_by_miner(conn: AsyncConnection) -> None:
    """5: the jobs running on a miner are found by miner, not by walking every running
    job, when it says hello."""
    running = next(i for i in schema.jobs.indexes if i.name == "ix_jobs_running_miner")
    await conn.run_sync(running.create)


# The jobs indexes that version 6 made partial.
_SWEEP_INDEXES = ("ix_jobs_queue", "ix_jobs_lease", "ix_jobs_deadline")


async def _partial_sweep_indexes(conn: AsyncConnection) -> None:
    """6: the queue, lease and deadline indexes hold only the jobs their reads look for
    (queued; holding a lease; queued or running), so an ended job leaves them."""
    for index in schema.jobs.indexes:
        if index.name in _SWEEP_INDEXES:
            await conn.execute(text(f"DROP INDEX {index.name}"))
            await conn.run_sync(index.create)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", None),
    Migration(2, "unsealed transfers index; receipts sealed with payment", _seal_by_payment),
    Migration(3, "indexes for job listings and recent completions", _read_indexes),
    Migration(4, "credit index of transfers from another address", _credits_from_another),
    Migration(5, "index of running jobs by miner", _running_by_miner),
    Migration(6, "queue, lease and deadline indexes of unended jobs only", _partial_sweep_indexes),
)
LATEST_VERSION = MIGRATIONS[-1].version


async def migrate(conn: AsyncConnection) -> int:
    """Bring the database to `LATEST_VERSION` inside the caller's transaction."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    exists = await conn.run_sync(lambda c: inspect(c).has_table("schema_version"))
    if not exists:
        for meta in schema.ALL_METADATA:
            await conn.run_sync(meta.create_all)
        stamp = now_ms()
        await conn.execute(
            schema.schema_version.insert(),
            [{"version": m.version, "name": m.name, "applied_at_ms": stamp} for m in MIGRATIONS],
        )
        return LATEST_VERSION
    rows = await conn.execute(select(schema.schema_version.c.version))
    current = max((row.version for row in rows), default=0)
    if current > LATEST_VERSION:
        raise SchemaError(
            f"database schema version {current} is newer than this coordinator "
            f"({LATEST_VERSION}); upgrade the coordinator"
        )
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        if migration.apply is None:
            raise SchemaError(f"migration {migration.version} has no upgrade step")
        await migration.apply(conn)
        await conn.execute(
            schema.schema_version.insert(),
            {"version": migration.version, "name": migration.name, "applied_at_ms": now_ms()},
        )
    return LATEST_VERSION
