"""The hub's reads by key find their rows through that key, whatever else the jobs table
holds (SQLite and PostgreSQL).

Without statistics (SQLite keeps none for this schema; PostgreSQL until autovacuum first
analyzes the table) a planner judges `status = 'queued'` on a status index as selective
as a list of ids on the primary key. A claim round took a status index and walked every
queued job to find the few it claimed (18 ms a round on SQLite with 100,000 queued, 20 ms
on PostgreSQL; 0.2-0.3 ms by key); a miner's hello walked every running job to find its
own (8 ms with 40,000 running, once per miner when thousands reconnect). On SQLite both
ran on the event loop (docs/benchmarks.md, round 15). The queue's head and the reaper's
sweeps read partial indexes of unended jobs (round 24)."""

from __future__ import annotations

from typing import Any

import pytest
from ait_harness import query_plan
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncConnection
from test_job_listing import _job as listing_row

from coordinator.db.database import Database
from coordinator.db.schema import jobs
from coordinator.domain.jobs import JobStatus
from coordinator.service.jobs import QUEUED_MODELS
from coordinator.service.lifecycle import (
    EXPIRED_LEASES,
    PAST_DEADLINE,
    QUEUE_HEAD,
    RUNNING_ON_MINER,
    claimable_rows,
)


def _job(index: int) -> dict[str, Any]:
    """test_job_listing's row (status queued, running, completed in turn), with ids in
    index order and a miner for the running ones."""
    row = listing_row(index)
    miner = f"miner_{index % 7}" if row["status"] == JobStatus.RUNNING.value else None
    return {**row, "job_id": f"job_{index:04d}", "miner_id": miner}


ROWS = [_job(i) for i in range(300)]
# As many as a claim round takes under load (70-100): with a handful of ids SQLite's
# planner took the key anyway, and the status index only above some ten.
WANTED = [f"job_{i:04d}" for i in range(0, 300, 4)] + ["job_9999"]  # 75 known, 1 not


@pytest.mark.parametrize("stamps", [False, True], ids=["whole rows", "stamps"])
async def test_a_claim_reads_its_jobs_by_id_not_through_the_queue(
    db: Database, stamps: bool
) -> None:
    postgresql = db.dialect == "postgresql"
    statement = claimable_rows(len(WANTED), postgresql, stamps=stamps)
    binds = {f"c{i}": job_id for i, job_id in enumerate(WANTED)}

    async def check(conn: AsyncConnection) -> tuple[list[str], str]:
        await conn.execute(jobs.insert(), ROWS)
        found = [row.job_id for row in await conn.execute(statement, binds)]
        return found, await query_plan(conn, statement.params(binds), as_is=True)

    found, plan = await db.write(check)
    queued = {r["job_id"] for r in ROWS if r["status"] == JobStatus.QUEUED.value}
    assert found == sorted(j for j in WANTED if j in queued) and len(found) == 25
    assert "ix_jobs_" not in plan, plan  # no status-led index walked (nor any other)
    if not postgresql:  # PostgreSQL may scan a table this small, which is as cheap
        assert "sqlite_autoindex_jobs_1 (job_id=?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan  # the ids come in order off the key


async def test_a_miners_hello_reads_its_running_jobs_by_miner(db: Database) -> None:
    binds = {"r_miner": "miner_3"}

    async def check(conn: AsyncConnection) -> tuple[list[str], str]:
        await conn.execute(jobs.insert(), ROWS)
        found = [row.job_id for row in await conn.execute(RUNNING_ON_MINER, binds)]
        return found, await query_plan(conn, RUNNING_ON_MINER.params(binds))

    found, plan = await db.write(check)
    expected = [r["job_id"] for r in ROWS if (r["status"], r["miner_id"]) == ("running", "miner_3")]
    assert sorted(found) == expected and len(expected) == 14
    assert "ix_jobs_running_miner" in plan, plan


def _swept(index: int) -> dict[str, Any]:
    """_job's row with a deadline (ms 1,000 + index) and, running, a lease (ms 500 +
    index); of mixed priorities, so the queue's order is not the rows' own."""
    row = _job(index)
    running = row["status"] == JobStatus.RUNNING.value
    return {
        **row,
        "priority": index % 3,
        "deadline_ms": 1_000 + index,
        "lease_expires_at_ms": 500 + index if running else None,
    }


SWEPT = [_swept(i) for i in range(300)]
NOT_ENDED = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


async def _plan_as_run(conn: AsyncConnection, statement: Any, binds: dict[str, Any]) -> str:
    """The plan of `statement` as the coordinator runs it: on SQLite with its parameters
    bound, not rendered as literals; on PostgreSQL `query_plan`'s."""
    if conn.dialect.name == "postgresql":
        return await query_plan(conn, statement.params(binds))
    compiled = statement.compile(dialect=conn.dialect)
    values = compiled.construct_params(binds)
    positional = tuple(values[name] for name in compiled.positiontup or ())
    rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), positional)
    return "\n".join(str(row.detail) for row in rows)


async def test_the_queue_and_the_reapers_sweeps_read_off_indexes_of_unended_jobs(
    db: Database,
) -> None:
    """The queue's head, its models, expired leases and passed deadlines: each read off
    its partial index (schema version 6), which serves only a query whose WHERE implies
    the index's, and each answering what the rows say."""
    reads = {
        "ix_jobs_queue": (QUEUE_HEAD, {"q_limit": 10}),
        "ix_jobs_lease": (EXPIRED_LEASES, {"e_now": 650, "e_limit": 1_000}),
        "ix_jobs_deadline": (PAST_DEADLINE, {"d_now": 1_100, "d_limit": 1_000}),
    }

    async def check(conn: AsyncConnection) -> dict[str, tuple[list[Any], str]]:
        await conn.execute(jobs.insert(), SWEPT)
        options = {
            index["name"]: str(index.get("dialect_options", {}))
            for index in await conn.run_sync(lambda c: inspect(c).get_indexes("jobs"))
            if index["name"] in reads
        }
        # Partial on the server: an ended job has no entry in them.
        assert len(options) == 3 and all("_where" in o for o in options.values()), options
        found: dict[str, tuple[list[Any], str]] = {}
        for index, (statement, binds) in reads.items():
            rows = [tuple(row) for row in await conn.execute(statement, binds)]
            found[index] = rows, await _plan_as_run(conn, statement, binds)
        models = [tuple(row) for row in await conn.execute(QUEUED_MODELS)]
        found["models"] = models, await _plan_as_run(conn, QUEUED_MODELS, {})
        return found

    found = await db.write(check)
    for index, (_, plan) in found.items():
        if index == "models":  # either index that leads with the status finds the queued
            assert "ix_jobs_queue" in plan or "ix_jobs_status_created" in plan, plan
        else:
            assert index in plan, (index, plan)

    queued = [r for r in SWEPT if r["status"] == JobStatus.QUEUED.value]
    queued.sort(key=lambda r: (-r["priority"], r["created_at_ms"], r["job_id"]))
    assert [row[0] for row in found["ix_jobs_queue"][0]] == [r["job_id"] for r in queued[:10]]
    assert found["models"][0] == [("gpt2",)] * len(queued)
    expired = {
        (r["job_id"], r["miner_id"])
        for r in SWEPT
        if r["status"] == JobStatus.RUNNING.value and r["lease_expires_at_ms"] < 650
    }
    assert set(found["ix_jobs_lease"][0]) == expired and len(expired) == 50
    due = {(r["job_id"],) for r in SWEPT if r["status"] in NOT_ENDED and r["deadline_ms"] <= 1_100}
    assert set(found["ix_jobs_deadline"][0]) == due and len(due) == 68
