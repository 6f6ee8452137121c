"""Several coordinator processes' worth of apps on one database, and the group-commit
writer under concurrent load: each waiter gets its own answer."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from ait_harness import PG_ADMIN_DSN, CoordinatorFactory
from api_helpers import call

from coordinator.appkeys import METRICS
from coordinator.service.jobs import admit_many


async def test_two_coordinators_share_jobs_and_events(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession, db_url: str
) -> None:
    a = await coordinator_factory()
    b = await coordinator_factory()
    key = await a.create_key("client")
    await a.fund(key.address, 5)
    status, job, _ = await call(
        http, "POST", a.url + "/v1/jobs", key, json={"model": "m", "input": 1, "max_price": 1}
    )
    assert status == 201
    # The key and the job are visible through the other process at once.
    status, seen, _ = await call(http, "GET", f"{b.url}/v1/jobs/{job['job_id']}", key)
    assert status == 200 and seen["status"] == "queued"

    events: list[str] = []

    async def stream() -> None:
        async with http.get(f"{a.url}/v1/jobs/{job['job_id']}/events", headers=key.headers) as r:
            async for raw in r.content:
                if raw.startswith(b"data: "):
                    events.append(json.loads(raw[6:])["status"])

    reader = asyncio.create_task(stream())
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.02)
    status, _, _ = await call(http, "DELETE", f"{b.url}/v1/jobs/{job['job_id']}", key)
    assert status == 200
    # On PostgreSQL the cancel reaches A's stream through NOTIFY at once; on SQLite the
    # stream notices on its next quiet-period re-read, so only wait for it on PostgreSQL.
    if db_url.startswith("postgresql"):
        await asyncio.wait_for(reader, 5)
        assert events[-1] == "cancelled"
    else:
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
    status, again, _ = await call(http, "DELETE", f"{a.url}/v1/jobs/{job['job_id']}", key)
    assert status == 409 and "cancelled" in again["detail"]
    assert await a.balance_uait(key.address) == (5_000_000, 0)


async def test_group_commit_under_concurrent_submits(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession
) -> None:
    c = await coordinator_factory()
    rich, poor = await c.create_key("client"), await c.create_key("client")
    await c.fund(rich.address, 100)
    await c.fund(poor.address, 0.5)
    writer = c.db.writer
    admissions = c.db.coalescer(admit_many)
    before_batches, before_ops = writer.batches, writer.operations
    before_admissions, before_admitting_ops = admissions.requests, admissions.operations

    async def submit(key: object, price: float) -> int:
        status, _, _ = await call(
            http,
            "POST",
            c.url + "/v1/jobs",
            key,  # type: ignore[arg-type]
            json={"model": "m", "input": "x", "max_price": price},
        )
        return status

    results = await asyncio.gather(
        *(submit(rich, 1) for _ in range(60)), *(submit(poor, 0.2) for _ in range(5))
    )
    assert results[:60] == [201] * 60
    assert sorted(results[60:]) == [201, 201, 402, 402, 402]  # 0.5 AIT covers two
    assert await c.balance_uait(rich.address) == (40_000_000, 60_000_000)
    assert await c.balance_uait(poor.address) == (100_000, 400_000)
    # Every submit went through the writer, coalesced with those that arrived with it.
    assert admissions.requests - before_admissions == 65
    admitting_ops = admissions.operations - before_admitting_ops
    assert 1 <= admitting_ops <= 65 and writer.operations - before_ops >= admitting_ops
    assert writer.batches - before_batches <= writer.operations - before_ops


async def test_writer_batches_and_isolates_failures(
    coordinator_factory: CoordinatorFactory,
) -> None:
    """Operations queued together commit in one transaction; one that raises rolls back
    alone (the batch runs again, a savepoint per operation) and only its waiter sees the
    exception; what the others wrote lands once."""
    from sqlalchemy import func, select

    from coordinator.db.schema import api_keys

    c = await coordinator_factory()
    writer = c.db.writer
    before, reruns_before = writer.batches, writer.reruns

    def insert(i: int, fail: bool):  # type: ignore[no-untyped-def]
        async def op(conn):  # type: ignore[no-untyped-def]
            await conn.execute(
                api_keys.insert(),
                {
                    "key_id": f"k{i}",
                    "key_hash": f"{i:064x}",
                    "role": "client",
                    "address": "ait1" + "0" * 40,
                    "created_at_ms": 0,
                },
            )
            if fail:
                raise LookupError(f"op {i} fails after writing")
            return i

        return op

    results = await asyncio.gather(
        *(c.db.write(insert(i, fail=i % 10 == 3)) for i in range(50)), return_exceptions=True
    )
    for i, result in enumerate(results):
        if i % 10 == 3:
            assert isinstance(result, LookupError) and str(i) in str(result)
        else:
            assert result == i
    assert writer.batches - before <= 2  # queued together, committed together
    assert 1 <= writer.reruns - reruns_before <= writer.batches - before

    async def count_keys() -> int:
        async with c.db.read() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(api_keys)
                        .where(api_keys.c.key_id.in_([f"k{i}" for i in range(80)]))
                    )
                ).scalar_one()
            )

    assert await count_keys() == 45
    # A batch in which nothing raises commits on its first run.
    reruns_before = writer.reruns
    results = await asyncio.gather(*(c.db.write(insert(i, fail=False)) for i in range(50, 80)))
    assert results == list(range(50, 80))
    assert writer.reruns == reruns_before
    assert await count_keys() == 75


async def test_listen_connection_comes_back(
    coordinator_factory: CoordinatorFactory, db_url: str
) -> None:
    """A dropped LISTEN connection is re-made and cross-process events flow again."""
    if not db_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    import asyncpg

    from coordinator.appkeys import JOB_BUS

    a, b = await coordinator_factory(), await coordinator_factory()
    bus_a, bus_b = a.app[JOB_BUS], b.app[JOB_BUS]
    pid = bus_a._pg.get_server_pid()
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    for _ in range(200):
        if bus_a._pg is not None and bus_a._pg.get_server_pid() != pid:
            break
        await asyncio.sleep(0.05)
    assert bus_a._pg is not None and bus_a._pg.get_server_pid() != pid
    async with bus_a.subscribe("job_x") as sub:
        bus_b.publish("job_x", {"type": "status", "status": "running"})
        event = await sub.get(5)
    assert event is not None and event["status"] == "running"


async def test_stream_of_all_jobs_sees_the_callers_jobs_from_another_process(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession, db_url: str
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("events cross processes through PostgreSQL's LISTEN/NOTIFY")
    a = await coordinator_factory()
    b = await coordinator_factory()
    mine, theirs = await a.create_key("client"), await a.create_key("client")
    for key in (mine, theirs):
        await a.fund(key.address, 5)
    seen: list[dict[str, object]] = []

    async def stream() -> None:
        async with http.get(f"{a.url}/v1/jobs/events", headers=mine.headers) as r:
            async for raw in r.content:
                if raw.startswith(b"data: "):
                    seen.append(json.loads(raw[6:]))

    reader = asyncio.create_task(stream())
    try:
        for _ in range(200):  # bounded: until A counts the stream
            if a.app[METRICS].sse_streams == 1:
                break
            await asyncio.sleep(0.02)
        body = {"model": "m", "input": 1, "max_price": 1}
        _, other, _ = await call(http, "POST", b.url + "/v1/jobs", theirs, json=body)
        _, own, _ = await call(http, "POST", b.url + "/v1/jobs", mine, json=body)
        await call(http, "DELETE", f"{b.url}/v1/jobs/{own['job_id']}", mine)
        for _ in range(250):
            if ("cancelled", own["job_id"]) in [(e.get("status"), e["job_id"]) for e in seen]:
                break
            await asyncio.sleep(0.02)
    finally:
        reader.cancel()
    assert [e["status"] for e in seen if e["job_id"] == own["job_id"]] == ["queued", "cancelled"]
    assert all(e["job_id"] != other["job_id"] for e in seen)
    assert all("_owner" not in e and "_job" not in e for e in seen)
