"""The in-process job event bus: who gets which event, and what a slow reader loses."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest
from ait_harness import sample_job

from coordinator.bus import EVENTS_CHANNEL, JOB_OWNER, JOB_SNAPSHOT, JobBus
from coordinator.domain.jobs import Job


def _owned_job(job_id: str, owner: str) -> Job:
    return sample_job().evolve(job_id=job_id, client_address=owner)


def _ids(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["job_id"], event["type"]) for event in events]


async def test_a_job_subscriber_gets_its_job_and_an_all_jobs_subscriber_every_job() -> None:
    bus = JobBus()
    async with bus.subscribe("job_a") as one, bus.subscribe(None) as every:
        bus.publish("job_a", {"type": "status", "status": "queued"}, job="snapshot")
        bus.publish("job_b", {"type": "progress", "progress": 5})
        first = await one.get(0.1)
        assert first is not None and first["job_id"] == "job_a"
        assert first[JOB_SNAPSHOT] == "snapshot"  # the committed job, for local readers
        assert await one.get(0.01) is None  # job_b is not job_a's
        seen = [await every.get(0.1), await every.get(0.1)]
        assert [e["job_id"] for e in seen if e] == ["job_a", "job_b"]
        assert seen[1] is not None and JOB_SNAPSHOT not in seen[1]  # published without one
    assert not (bus._by_job or bus._by_owner or bus._by_kind)  # closed subscriptions are gone


async def test_a_clients_subscription_is_offered_its_own_jobs_events_only() -> None:
    # A client's stream of all its jobs woke for every client's every event and dropped
    # the others' (16 clients: ~16 wake-ups an event, docs/benchmarks.md round 20).
    bus = JobBus()
    async with (
        bus.subscribe(None, owner="ait1alice") as alice,
        bus.subscribe(None) as every,
        bus.subscribe_cancels() as cancels,
    ):
        bus.publish("job_a", {"type": "status"}, job=_owned_job("job_a", "ait1alice"))
        bus.publish("job_b", {"type": "status"}, job=_owned_job("job_b", "ait1bob"))
        bus.publish("job_a", {"type": "progress"}, job=_owned_job("job_a", "ait1alice"))
        bus.publish("job_a", {"type": "cancel", "miner_id": "m1"})  # for the hub, no job
        bus.publish("job_c", {"type": "status"})  # whose it is unknown: alice checks it
        assert _ids(alice.take_ready(10)) == [
            ("job_a", "status"),
            ("job_a", "progress"),
            ("job_c", "status"),
        ]
        assert _ids(cancels.take_ready(10)) == [("job_a", "cancel")]
        assert len(every.take_ready(10)) == 5
    assert not (bus._by_job or bus._by_owner or bus._by_kind)


async def test_a_cancel_notice_amid_a_commits_burst_of_events_is_not_dropped() -> None:
    # The hub's cancel listener read every event through a queue of 256: a commit that
    # published more before it ran (a group commit settles hundreds of jobs) pushed a
    # cancel notice out, and the miner was never told to stop.
    bus = JobBus()
    async with bus.subscribe_cancels() as cancels:
        bus.publish("job_x", {"type": "cancel", "miner_id": "m1"})
        for n in range(1000):
            bus.publish(f"job_{n}", {"type": "status"}, job=_owned_job(f"job_{n}", "ait1a"))
        assert _ids(cancels.take_ready(10)) == [("job_x", "cancel")]
        assert cancels.dropped == 0


async def test_an_event_from_another_process_reaches_its_owners_subscription_only() -> None:
    # The LISTEN callback's input: another process's NOTIFY payload, naming the owner.
    bus = JobBus()
    async with bus.subscribe(None, owner="ait1alice") as alice:
        for job_id, owner in (("job_a", "ait1alice"), ("job_b", "ait1bob")):
            event = {"type": "status", "job_id": job_id, JOB_OWNER: owner}
            payload = orjson.dumps({"origin": "elsewhere", "event": event}).decode()
            bus._on_notify(None, 0, EVENTS_CHANNEL, payload)
        assert _ids(alice.take_ready(10)) == [("job_a", "status")]


async def test_a_subscription_to_some_statuses_keeps_only_their_events() -> None:
    # What a client waiting for ends asks for (docs/api.md): neither queued nor running
    # views, nor progress; and what it leaves out never fills its queue or counts as lost.
    bus = JobBus()
    ends = frozenset({"completed", "failed"})
    async with (
        bus.subscribe(None, queue_size=2, owner="ait1alice", statuses=ends) as alice,
        bus.subscribe(None, statuses=frozenset({"running"})) as running,
    ):
        for n in range(5):
            job = _owned_job(f"job_{n}", "ait1alice")
            for status in ("queued", "running"):
                bus.publish(job.job_id, {"type": "status", "status": status}, job=job)
            bus.publish(job.job_id, {"type": "progress", "progress": 50}, job=job)
        bus.publish(
            "job_0", {"type": "status", "status": "completed"}, job=_owned_job("job_0", "ait1alice")
        )
        event = {"type": "status", "job_id": "job_1", "status": "failed", JOB_OWNER: "ait1alice"}
        payload = orjson.dumps({"origin": "elsewhere", "event": event}).decode()
        bus._on_notify(None, 0, EVENTS_CHANNEL, payload)  # another process's end
        assert [(e["job_id"], e["status"]) for e in alice.take_ready(10)] == [
            ("job_0", "completed"),
            ("job_1", "failed"),
        ]
        assert alice.dropped == 0
        kept = running.take_ready(300)
        assert [(e["type"], e.get("status")) for e in kept[:2]] == [
            ("status", "running"),
            ("progress", None),  # a running job's: kept where running is asked for
        ]
        assert len(kept) == 10


async def test_a_reader_that_falls_behind_keeps_the_newest_and_counts_the_rest() -> None:
    bus = JobBus()
    async with bus.subscribe(None, queue_size=2) as sub:
        for n in range(5):
            bus.publish(f"job_{n}", {"type": "status", "status": "queued"})
        assert sub.dropped == 3
        kept = [await sub.get(0.1), await sub.get(0.1)]
        assert [e["job_id"] for e in kept if e] == ["job_3", "job_4"]
        bus.publish("job_5", {"type": "status", "status": "queued"})
        assert sub.dropped == 3  # room again: nothing more lost


async def test_take_ready_hands_over_what_waits_without_waiting() -> None:
    bus = JobBus()
    async with bus.subscribe(None) as sub:
        assert sub.take_ready(10) == []
        for n in range(5):
            bus.publish(f"job_{n}", {"type": "status", "status": "queued"})
        assert [e["job_id"] for e in sub.take_ready(3)] == ["job_0", "job_1", "job_2"]
        assert [e["job_id"] for e in sub.take_ready(10)] == ["job_3", "job_4"]


async def _cancelled_in_the_tick(
    waiter: Coroutine[Any, Any, None], trigger: Callable[[], None], ticks: int
) -> bool:
    """Start `waiter`, fire `trigger`, let `ticks` loop turns pass, cancel: did the
    cancel end the task? (Python 3.11's asyncio.wait_for dropped it at some offsets.)"""
    task = asyncio.create_task(waiter)
    for _ in range(3):
        await asyncio.sleep(0)  # the task is waiting now
    trigger()
    for _ in range(ticks):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    if not task.done():  # the cancel was lost and the waiter went back to sleep
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        return False
    return task.cancelled()


@pytest.mark.parametrize("ticks", range(6))
async def test_a_cancel_landing_with_a_wake_up_still_stops_the_waiter(ticks: int) -> None:
    # The dispatcher loops on wait_for_work; shut down just as a wake-up came, it must end
    # (a lost cancel hung the coordinator's shutdown).
    bus = JobBus()

    async def dispatcher_loop() -> None:
        while True:
            await bus.wait_for_work(60)

    assert await _cancelled_in_the_tick(dispatcher_loop(), bus.wake, ticks)


@pytest.mark.parametrize("ticks", range(6))
async def test_a_cancel_landing_with_an_event_still_stops_the_reader(ticks: int) -> None:
    bus = JobBus()
    async with bus.subscribe(None) as sub:

        async def reader_loop() -> None:
            while True:
                await sub.get(60)

        publish = functools.partial(bus.publish, "job_a", {"type": "status"})
        assert await _cancelled_in_the_tick(reader_loop(), publish, ticks)
