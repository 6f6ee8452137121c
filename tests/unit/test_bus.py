"""The in-process job event bus: who gets which event, and what a slow reader loses."""

from __future__ import annotations

from coordinator.bus import JOB_SNAPSHOT, JobBus


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
        assert JOB_SNAPSHOT not in seen[1]  # published without one
    assert not bus._subs  # closed subscriptions are gone


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
