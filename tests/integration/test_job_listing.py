"""Job listings, histories and a model's latest completions on real databases: the rows
and order they answer, and that each reads off an index that gives its whole ORDER BY
(schema version 3).

Without such an index the database sorts every matching row for each page; on SQLite
that runs on the event loop (an admin's page of 38,000 jobs took 90 ms, a client's page
at offset 30,000 40 ms), so a listing of a long history stalled every request and
dispatch."""

from __future__ import annotations

from typing import Any

import pytest
from ait_harness import LoopTurns, query_plan
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db.database import Database
from coordinator.db.schema import jobs, receipts
from coordinator.domain.jobs import JobStatus
from coordinator.service.jobs import history_slice, list_statements, read_history
from coordinator.service.keys import ApiKey
from coordinator.service.records import (
    JOB_COLUMNS,
    SUMMARY_COLUMNS,
    job_from_row,
    job_summary,
    summary_from_row,
)
from coordinator.service.throughput import RECENT_COMPLETED, THROUGHPUT_JOBS

ALICE, BOB = "ait1" + "a" * 40, "ait1" + "b" * 40
STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED)


def _key(role: str, address: str) -> ApiKey:
    return ApiKey(key_id=f"key_{role}", role=role, address=address, name=None, created_at_ms=0)


CLIENT, ADMIN = _key("client", ALICE), _key("admin", BOB)


def _job(index: int) -> dict[str, Any]:
    # Three jobs share each millisecond, so job_id must break the ties.
    return {
        "job_id": f"job_{(index * 7919) % 1000:04d}",
        "client_address": (ALICE, BOB)[index % 2],
        "key_id": "key_x",
        "chain_id": "ait-devnet",
        "model": "gpt2",
        "status": STATUSES[index % 3].value,
        "priority": 1,
        "requirements": "{}",
        "params": "{}",
        "output_config": "{}",
        "input_json": '"hi"',
        "input_sha256": "0" * 64,
        "input_bytes": 4,
        "timeout_seconds": 60,
        "deadline_ms": 10**13,
        "estimated_cost_uait": 1,
        "estimated_units": 1,
        "estimated_time_seconds": 1,
        "cost_uait": index,
        "created_at_ms": 1_000 + index // 3,
        "updated_at_ms": 1_000 + index // 3,
    }


ROWS = [_job(i) for i in range(60)]


def _expected(key: ApiKey, status: JobStatus | None, newest_first: bool) -> list[str]:
    rows = [
        r
        for r in ROWS
        if (key.role == "admin" or r["client_address"] == key.address)
        and (status is None or r["status"] == status.value)
    ]
    rows.sort(key=lambda r: (r["created_at_ms"], r["job_id"]), reverse=newest_first)
    return [r["job_id"] for r in rows]


def _sorts_or_scans(plan: str) -> list[str]:
    bad = ("TEMP B-TREE", "Sort", "Seq Scan")
    lines = plan.splitlines()
    return [line for line in lines if any(b in line for b in bad) or line.strip() == "SCAN jobs"]


CASES = [
    (key, status)
    for key in (CLIENT, ADMIN)
    for status in (None, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED)
]


@pytest.mark.parametrize(("key", "status"), CASES, ids=lambda v: getattr(v, "role", v))
async def test_listing_pages_come_off_an_index_in_order(
    db: Database, key: ApiKey, status: JobStatus | None
) -> None:
    async def check(conn: AsyncConnection) -> tuple[list[str], int, str]:
        await conn.execute(jobs.insert(), ROWS)
        expected_total = len(_expected(key, status, True))
        seen: list[str] = []
        for offset in range(0, expected_total + 7, 7):
            count, page = list_statements(key, status, 7, offset)
            assert (await conn.execute(count)).scalar_one() == expected_total
            seen += [row.job_id for row in await conn.execute(page)]
        plan = await query_plan(conn, list_statements(key, status, 7, 21)[1])
        return seen, expected_total, plan

    seen, total, plan = await db.write(check)
    assert seen == _expected(key, status, newest_first=True)
    assert total == len(seen) and (status == JobStatus.FAILED or total > 0)
    assert _sorts_or_scans(plan) == [], plan


@pytest.mark.parametrize("key", [CLIENT, ADMIN], ids=lambda k: k.role)
async def test_history_reads_in_slices_off_an_index_oldest_first(db: Database, key: ApiKey) -> None:
    """Slices of 4 rows: three jobs share each millisecond, so ties straddle the slices'
    boundaries; every job in range comes once, in order, and the loop runs between slices."""
    await db.write(lambda conn: conn.execute(jobs.insert(), ROWS))
    async with LoopTurns() as turns:
        items, count, cost = await read_history(db, key, 1_003, 1_015, slice_rows=4)

    async def plan(conn: AsyncConnection) -> str:
        return await query_plan(conn, history_slice(key, 1_003, 1_015, (1_005, "job_0500"), 4))

    slice_plan = await db.write(plan)
    in_range = [r for r in ROWS if 1_003 <= r["created_at_ms"] < 1_015]
    mine = [r for r in in_range if key.role == "admin" or r["client_address"] == key.address]
    mine.sort(key=lambda r: (r["created_at_ms"], r["job_id"]))
    assert [item["job_id"] for item in items] == [r["job_id"] for r in mine]
    assert (count, cost) == (len(mine), sum(r["cost_uait"] for r in mine))
    assert turns.during >= len(mine) // 4  # the loop ran between every two slices
    assert _sorts_or_scans(slice_plan) == [], slice_plan


async def test_list_items_from_rows_equal_those_of_whole_jobs(db: Database) -> None:
    """Listings build their items from a few columns; they must read exactly as the items
    built from the whole job (job_summary of job_from_row)."""
    varied = [
        {
            **_job(i),
            "name": f"n{i}" if i % 2 else None,
            "priority": i % 3,
            "progress": i,
            "cost_uait": None if i % 2 else i,
            "started_at_ms": None if i % 2 else 2_000 + i,
            "completed_at_ms": None if i % 4 else 3_000 + i,
        }
        for i in range(12)
    ]

    async def read(conn: AsyncConnection) -> tuple[list[Any], list[Any]]:
        await conn.execute(jobs.insert(), varied)
        few = (await conn.execute(select(*SUMMARY_COLUMNS).order_by(jobs.c.job_id))).all()
        whole = (await conn.execute(select(*JOB_COLUMNS).order_by(jobs.c.job_id))).all()
        return list(few), list(whole)

    few, whole = await db.write(read)
    assert [summary_from_row(r) for r in few] == [job_summary(job_from_row(r)) for r in whole]
    assert {item["priority"] for item in map(summary_from_row, few)} == {"low", "normal", "high"}


async def test_a_models_latest_completions_come_off_an_index(db: Database) -> None:
    """Measured throughput reads the model's 20 latest completed jobs with their receipts,
    however long the history (it ran a join and sort of all of them, on the loop)."""

    async def check(conn: AsyncConnection) -> tuple[list[int], str]:
        rows = [
            {
                **_job(i),
                "model": ("echo", "gpt2")[i % 2],
                "status": (JobStatus.FAILED if i % 5 == 0 else JobStatus.COMPLETED).value,
                "started_at_ms": 5_000 + i,
                "completed_at_ms": 9_000 - i,  # newest completion: the lowest index
            }
            for i in range(60)
        ]
        await conn.execute(jobs.insert(), rows)
        await conn.execute(
            receipts.insert(),
            [
                {
                    "job_id": r["job_id"],
                    "chain_id": "ait-devnet",
                    "receipt": f'{{"units": {r["completed_at_ms"]}}}',
                    "signature": "{}",
                    "created_at_ms": 1,  # the receipt's own time does not order them
                }
                for r in rows
                if r["status"] == JobStatus.COMPLETED.value
            ],
        )
        found = await conn.execute(RECENT_COMPLETED, {"t_model": "gpt2"})
        completed = [int(row.completed_at_ms) for row in found]
        bound = RECENT_COMPLETED.params(t_model="gpt2")
        return completed, await query_plan(conn, bound)

    completed, plan = await db.write(check)
    gpt2_completed = [9_000 - i for i in range(60) if i % 2 == 1 and i % 5 != 0]
    assert completed == gpt2_completed[:THROUGHPUT_JOBS]
    assert _sorts_or_scans(plan) == [] and "SCAN receipts" not in plan, plan
