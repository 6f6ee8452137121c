"""The hub's reads by key find their rows through that key, whatever else the jobs table
holds (SQLite and PostgreSQL).

Without statistics (SQLite keeps none for this schema; PostgreSQL until autovacuum first
analyzes the table) a planner judges `status = 'queued'` on a status index as selective
as a list of ids on the primary key. A claim round took a status index and walked every
queued job to find the few it claimed (18 ms a round on SQLite with 100,000 queued, 20 ms
on PostgreSQL; 0.2-0.3 ms by key); a miner's hello walked every running job to find its
own (8 ms with 40,000 running, once per miner when thousands reconnect). On SQLite both
ran on the event loop (docs/benchmarks.md, round 15)."""

from __future__ import annotations

from typing import Any

from ait_harness import query_plan
from sqlalchemy.ext.asyncio import AsyncConnection
from test_job_listing import _job as listing_row

from coordinator.db.database import Database
from coordinator.db.schema import jobs
from coordinator.domain.jobs import JobStatus
from coordinator.service.lifecycle import RUNNING_ON_MINER, claimable_rows


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


async def test_a_claim_reads_its_jobs_by_id_not_through_the_queue(db: Database) -> None:
    postgresql = db.dialect == "postgresql"
    statement = claimable_rows(len(WANTED), postgresql)
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
