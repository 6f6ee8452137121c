"""Batch submits (`POST /v1/jobs/batch`) and the stream of all a caller's jobs
(`GET /v1/jobs/events`) against a real coordinator (SQLite and PostgreSQL), and with a
real miner daemon."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ait_harness import Coordinator, KeyInfo
from api_helpers import call, read_events
from test_hub_flow import Stack, open_stack

Event = tuple[str, dict[str, Any]]


def job(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt2", "input": "hello", "max_price": 1, **fields}


async def batch(
    coordinator: Coordinator, http: aiohttp.ClientSession, key: KeyInfo, body: Any
) -> tuple[int, Any]:
    status, answer, _ = await call(http, "POST", coordinator.url + "/v1/jobs/batch", key, json=body)
    return status, answer


async def job_count(coordinator: Coordinator, http: aiohttp.ClientSession, key: KeyInfo) -> int:
    _, page, _ = await call(http, "GET", coordinator.url + "/v1/jobs", key)
    return int(page["total"])


@contextlib.asynccontextmanager
async def watching(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], query: str = ""
) -> AsyncIterator[list[Event]]:
    """Reads `GET /v1/jobs/events` (with `query`, e.g. "?status=completed") into a list
    while the block runs; subscribed (headers received) before the block starts."""
    events: list[Event] = []
    resp = await http.get(url + "/v1/jobs/events" + query, headers=headers)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")

    reader = asyncio.create_task(read_events(resp, events))
    try:
        yield events
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        resp.close()


async def seen(events: list[Event], check: Callable[[list[Event]], bool], what: str) -> None:
    for _ in range(250):  # bounded: 5 s
        if check(events):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {what}: {events}")


@pytest.fixture
async def funded(coordinator: Coordinator, client_key: KeyInfo) -> KeyInfo:
    await coordinator.fund(client_key.address, 10)
    return client_key


async def test_batch_accepts_every_job_in_order_and_holds_each(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    body = {"jobs": [job(name="a", max_price=2), job(name="b"), job(name="c", max_price=0.5)]}
    status, answer = await batch(coordinator, http, funded, body)
    assert status == 201, answer
    accepted = answer["jobs"]
    assert [j["estimated_cost"] for j in accepted] == [2, 1, 0.5]
    assert all(j["status"] == "queued" and j["chain_id"] == "ait-devnet" for j in accepted)
    assert len({j["job_id"] for j in accepted}) == 3
    assert await coordinator.balance_uait(funded.address) == (6_500_000, 3_500_000)
    for sent, got in zip(body["jobs"], accepted, strict=True):
        _, view, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{got['job_id']}", funded)
        assert view["name"] == sent["name"] and view["status"] == "queued"
    # Newest first, even for jobs created in the same millisecond: the batch's last job
    # is the latest.
    _, page, _ = await call(http, "GET", coordinator.url + "/v1/jobs", funded)
    assert [j["job_id"] for j in page["jobs"]] == [j["job_id"] for j in reversed(accepted)]
    _, latest, _ = await call(http, "GET", coordinator.url + "/v1/jobs/latest", funded)
    assert latest["job_id"] == accepted[-1]["job_id"]


async def test_batch_beyond_the_balance_writes_nothing(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    status, problem = await batch(coordinator, http, funded, {"jobs": [job(max_price=4)] * 3})
    assert status == 402 and problem["type"] == "insufficient-funds"
    assert "12.000000 AIT" in problem["detail"] and "10.000000 AIT" in problem["detail"]
    assert await job_count(coordinator, http, funded) == 0
    assert await coordinator.balance_uait(funded.address) == (10_000_000, 0)
    # Each alone fits: the check is of the whole batch, not of its first jobs.
    status, _ = await batch(coordinator, http, funded, {"jobs": [job(max_price=4)] * 2})
    assert status == 201
    assert await coordinator.balance_uait(funded.address) == (2_000_000, 8_000_000)


async def test_batch_names_every_bad_field_and_writes_nothing(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    items = [job(), {"model": "", "input": "x"}, 5, job(bogus=1), job(chain_id="nowhere")]
    status, problem = await batch(coordinator, http, funded, {"jobs": items})
    assert status == 422, problem
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {"jobs.1.model", "jobs.2", "jobs.3.bogus", "jobs.4.chain_id"}
    pointers = {e["pointer"] for e in problem["errors"]}
    assert "#/jobs/3/bogus" in pointers
    assert await job_count(coordinator, http, funded) == 0

    for body, field in (
        ({"jobs": []}, "jobs"),
        ({"jobs": [job()] * 101}, "jobs"),
        ({"jobs": "x"}, "jobs"),
        ({}, "jobs"),
        ({"jobs": [job()], "extra": 1}, "extra"),
    ):
        status, problem = await batch(coordinator, http, funded, body)
        assert status == 422 and field in {e["field"] for e in problem["errors"]}, problem
    status, problem = await batch(coordinator, http, funded, [job()])
    assert status == 400 and "object" in problem["detail"]
    assert await job_count(coordinator, http, funded) == 0


async def test_batch_with_an_unmatchable_job_is_refused_whole(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    items = [job(), job(model="no-such-model", fail_if_unmatched=True)]
    status, problem = await batch(coordinator, http, funded, {"jobs": items})
    assert status == 422 and [e["field"] for e in problem["errors"]] == ["jobs.1.model"]
    assert await job_count(coordinator, http, funded) == 0


async def test_batch_needs_a_client_key(
    coordinator: Coordinator, admin_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    miner = await coordinator.create_key("miner")
    status, problem = await batch(coordinator, http, miner, {"jobs": [job()]})
    assert status == 403, problem
    status, _, _ = await call(http, "POST", coordinator.url + "/v1/jobs/batch", json={})
    assert status == 401


async def test_events_of_all_jobs_show_the_callers_jobs_only(
    coordinator: Coordinator, funded: KeyInfo, admin_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    other = await coordinator.create_key("client")
    await coordinator.fund(other.address, 10)
    url = coordinator.url
    async with (
        watching(http, url, funded.headers) as mine,
        watching(http, url, other.headers) as theirs,
        watching(http, url, admin_key.headers) as everyone,
    ):
        _, answer = await batch(coordinator, http, funded, {"jobs": [job(), job()]})
        first, second = (j["job_id"] for j in answer["jobs"])
        _, own, _ = await call(http, "POST", url + "/v1/jobs", other, json=job())
        await call(http, "DELETE", f"{url}/v1/jobs/{first}", funded)

        def statuses(events: list[Event]) -> set[tuple[str, str]]:
            return {(data["job_id"], data["status"]) for name, data in events if name == "status"}

        want = {(first, "queued"), (second, "queued"), (first, "cancelled")}
        await seen(mine, lambda e: want <= statuses(e), "the caller's jobs")
        await seen(theirs, lambda e: (own["job_id"], "queued") in statuses(e), "the other's job")
        await seen(everyone, lambda e: len(statuses(e)) == 4, "every job, by the admin")
        assert {job_id for job_id, _ in statuses(mine)} == {first, second}
        assert {job_id for job_id, _ in statuses(theirs)} == {own["job_id"]}
        assert all(name == "status" for name, _ in mine)
        cancelled = next(d for n, d in mine if d["status"] == "cancelled")
        assert cancelled["job_id"] == first and "created_at" in cancelled  # the whole job


async def test_events_of_all_jobs_follow_a_real_miner(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as stack:
        await _follow_a_real_miner(stack)


async def _follow_a_real_miner(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    await stack.daemon(miner_key, max_concurrency=2)
    headers = {"Authorization": f"Bearer {client_key}"}
    async with watching(stack.http, stack.url, headers) as events:
        body = {"jobs": [{"model": "echo", "input": {"n": n}} for n in range(3)]}
        body["jobs"][0]["params"] = {"delay_ms": 600}  # long enough to report progress
        answer = await stack.call("POST", "/v1/jobs/batch", client_key, body, expect=201)
        ids = [j["job_id"] for j in answer["jobs"]]

        def done(events: list[Event]) -> bool:
            ended = {d["job_id"] for n, d in events if n == "status" and d["status"] == "completed"}
            return ended == set(ids)

        await seen(events, done, "every job of the batch completed")
    completed = {d["job_id"]: d for n, d in events if n == "status" and d["status"] == "completed"}
    assert [completed[i]["result"] for i in ids] == [{"n": 0}, {"n": 1}, {"n": 2}]
    progress = [d for n, d in events if n == "progress"]
    assert progress and {d["job_id"] for d in progress} <= set(ids)
    assert all("_job" not in d and 0 <= d["progress"] <= 100 for d in progress)


async def test_a_stream_asked_for_some_statuses_sends_only_those(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as stack:
        miner_key, _ = await stack.key("miner")
        client_key, _ = await stack.client(100)
        await stack.daemon(miner_key, max_concurrency=2)
        headers = {"Authorization": f"Bearer {client_key}"}
        async with (
            watching(stack.http, stack.url, headers) as everything,
            watching(stack.http, stack.url, headers, "?status=completed,failed") as ends,
            watching(stack.http, stack.url, headers, "?status=running") as running,
        ):
            body = {"jobs": [{"model": "echo", "input": {"n": n}} for n in range(3)]}
            body["jobs"][0]["params"] = {"delay_ms": 600}  # long enough to report progress
            answer = await stack.call("POST", "/v1/jobs/batch", client_key, body, expect=201)
            ids = [j["job_id"] for j in answer["jobs"]]

            def ended(events: list[Event]) -> bool:
                done = {
                    d["job_id"] for n, d in events if n == "status" and d["status"] == "completed"
                }
                return done == set(ids)

            def progress(events: list[Event]) -> list[dict[str, Any]]:
                return [d for n, d in events if n == "progress"]

            await seen(everything, ended, "every job completed, on the stream of all events")
            await seen(ends, ended, "every job completed, on the stream of ends")
            # Published before the ends: the running stream has them once it catches up.
            await seen(running, lambda e: progress(e) == progress(everything), "the progress")
    # Each job's end once, as its whole job object; nothing before it.
    assert sorted(d["job_id"] for _, d in ends) == sorted(ids)
    assert {(n, d["status"]) for n, d in ends} == {("status", "completed")}
    assert all(d["result"] == {"n": ids.index(d["job_id"])} for _, d in ends)
    # Running: each job's start, and the progress its miner reported (a running job's).
    assert sorted(d["job_id"] for n, d in running if n == "status") == sorted(ids)
    assert {d["status"] for n, d in running if n == "status"} == {"running"}
    assert progress(running) and {d["job_id"] for d in progress(running)} <= set(ids)
    # Unfiltered: queued, running and completed for each, as before.
    assert {d["status"] for n, d in everything if n == "status"} == {
        "queued",
        "running",
        "completed",
    }


@pytest.mark.parametrize(
    ("query", "field", "detail"),
    [
        ("?status=done", "status", "must be a comma-separated list of: queued, running"),
        ("?status=completed,Failed", "status", "must be a comma-separated list of"),
        ("?statuses=completed", "statuses", "unknown query parameter"),
    ],
)
async def test_a_stream_asked_for_an_unknown_status_is_refused(
    coordinator: Coordinator,
    funded: KeyInfo,
    http: aiohttp.ClientSession,
    query: str,
    field: str,
    detail: str,
) -> None:
    url = coordinator.url + "/v1/jobs/events" + query
    status, problem, headers = await call(http, "GET", url, funded)
    assert status == 422 and headers["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in problem["errors"]] == [field]
    assert problem["errors"][0]["detail"].startswith(detail)


async def test_a_stream_asked_for_no_status_sends_every_event(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    async with watching(http, coordinator.url, funded.headers, "?status=") as events:
        _, answer = await batch(coordinator, http, funded, {"jobs": [job()]})
        job_id = answer["jobs"][0]["job_id"]

        def queued(events: list[Event]) -> bool:
            return (job_id, "queued") in {(d["job_id"], d["status"]) for _, d in events}

        await seen(events, queued, "the queued job on a stream that names no status")


async def test_a_reader_that_fell_behind_is_told_how_many_events_it_lost(
    coordinator: Coordinator,
    funded: KeyInfo,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coordinator.service.core import Core

    monkeypatch.setattr("coordinator.api.events.ALL_EVENTS_QUEUE", 4)
    _, accepted = await batch(coordinator, http, funded, {"jobs": [job()]})
    job_id = accepted["jobs"][0]["job_id"]
    bus = Core.of(coordinator.app).bus
    async with watching(http, coordinator.url, funded.headers) as events:
        # Ten events at once, before the stream's handler runs again: it keeps four.
        for n in range(10):
            bus.publish(job_id, {"type": "progress", "progress": n, "message": None})
        await seen(events, lambda e: len(e) == 5, "the drop notice and the four kept")
    assert events[0] == ("dropped", {"events": 6})
    assert [d["progress"] for _, d in events[1:]] == [6, 7, 8, 9]


async def test_each_job_of_a_batch_gets_its_own_queue_reason(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as stack:
        miner_key, _ = await stack.key("miner")
        client_key, _ = await stack.client(100)
        await stack.daemon(miner_key)  # serves echo on a CPU, one job at a time
        busy = await stack.submit(client_key, params={"delay_ms": 3000})
        await stack.wait_status(client_key, busy["job_id"], "running")
        headers = {"Authorization": f"Bearer {client_key}"}
        unserved = {"model": "gpt2", "input": "hi", "max_price": 1}
        on_a100 = {"model": "echo", "input": 1, "requirements": {"gpu_type": "a100"}}
        plain = {"model": "echo", "input": 2}
        body = {"jobs": [plain, unserved, on_a100, unserved, on_a100]}
        async with watching(stack.http, stack.url, headers) as events:
            answer = await stack.call("POST", "/v1/jobs/batch", client_key, body, expect=201)
            reasons = [j["queue_reason"] for j in answer["jobs"]]
            assert reasons == [
                "the only matching miner is busy",
                "no connected miner serves model gpt2",
                "1 miner serves echo but none has gpu_type a100",
                "no connected miner serves model gpt2",
                "1 miner serves echo but none has gpu_type a100",
            ]
            ids = [j["job_id"] for j in answer["jobs"]]

            def shown(events: list[Event]) -> dict[str, str]:
                return {
                    d["job_id"]: d["queue_reason"]
                    for n, d in events
                    if n == "status" and d["status"] == "queued"
                }

            await seen(events, lambda e: set(ids) <= set(shown(e)), "the five queued jobs")
            assert [shown(events)[i] for i in ids] == reasons
