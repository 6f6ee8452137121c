"""The job bus between processes on the real PostgreSQL server: events a process publishes
reach every other process's subscribers in order, however many go out together, and
reach its own subscribers once (PostgreSQL echoes each NOTIFY to its sender too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from ait_harness import fresh_postgres_database, require_postgres

from coordinator.bus import EVENTS_CHANNEL, JobBus

BURST = 300  # events published in one loop turn: NOTIFYs that wait go out together


@pytest.fixture
async def buses() -> AsyncIterator[tuple[JobBus, JobBus]]:
    """Two buses on one fresh database, as two coordinator processes have."""
    require_postgres()
    async with fresh_postgres_database() as url:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        a, b = JobBus(), JobBus()
        await a.attach_postgres(dsn)
        await b.attach_postgres(dsn)
        try:
            yield a, b
        finally:
            await a.close()
            await b.close()


async def test_a_burst_reaches_another_process_in_order_and_the_publisher_once(
    buses: tuple[JobBus, JobBus],
) -> None:
    a, b = buses
    async with a.subscribe(None, 2 * BURST) as mine, b.subscribe(None, 2 * BURST) as theirs:
        for n in range(BURST):
            a.publish(f"job_{n}", {"type": "status", "status": "queued", "n": n})
        a.wake()
        got = [await theirs.get(10) for _ in range(BURST)]
        assert [e and (e["job_id"], e["n"]) for e in got] == [(f"job_{n}", n) for n in range(BURST)]
        assert await b.wait_for_work(10)
        # b's marker is sent after a's burst was delivered to b, so a has had its own
        # echoes by the time the marker reaches it.
        b.publish("marker", {"type": "status", "status": "queued"})
        seen = [await mine.get(10) for _ in range(BURST + 1)]
        assert [e and e["job_id"] for e in seen][-1] == "marker"
        assert await mine.get(0.2) is None  # nothing twice


async def test_a_failed_notify_loses_only_what_its_statement_held(
    buses: tuple[JobBus, JobBus], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = buses
    async with b.subscribe(None) as theirs:
        # Over PostgreSQL's 8000-byte payload limit (publish never sends one): the
        # statement carrying it fails.
        a._spawn_notify(EVENTS_CHANNEL, "x" * 9000)
        await asyncio.sleep(0)  # that statement is on its way
        a.publish("job_after", {"type": "status", "status": "queued"})
        event = await theirs.get(10)
        assert event is not None and event["job_id"] == "job_after"
    assert "NOTIFY of 1 messages failed" in caplog.text
