"""Jobs API against a real coordinator (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from ait_harness import Coordinator, KeyInfo
from api_helpers import call, read_events


async def submit(
    coordinator: Coordinator, http: aiohttp.ClientSession, key: KeyInfo, **fields: object
) -> dict[str, object]:
    body = {"model": "gpt2", "input": "hello", "max_price": 0.5, **fields}
    status, job, _ = await call(http, "POST", coordinator.url + "/v1/jobs", key, json=body)
    assert status == 201, job
    return job  # type: ignore[no-any-return]


@pytest.fixture
async def funded(coordinator: Coordinator, client_key: KeyInfo) -> KeyInfo:
    await coordinator.fund(client_key.address, 100)
    return client_key


async def test_submit_holds_the_estimate(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    job = await submit(coordinator, http, funded, max_price=2.5, priority="high", name="x")
    assert job["status"] == "queued" and job["chain_id"] == "ait-devnet"
    assert job["estimated_cost"] == 2.5 and isinstance(job["estimated_time_seconds"], int)
    assert str(job["job_id"]).startswith("job_")
    assert await coordinator.balance_uait(funded.address) == (97_500_000, 2_500_000)
    status, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job['job_id']}", funded)
    assert status == 200
    for name in (
        "job_id",
        "status",
        "progress",
        "miner_id",
        "created_at",
        "started_at",
        "completed_at",
        "result",
        "model",
        "name",
        "estimated_cost",
        "cost",
        "error",
        "attempts",
        "chain_id",
    ):
        assert name in body, name
    assert body["priority"] == "high" and body["name"] == "x" and body["attempts"] == 0
    assert body["created_at"].endswith("Z") and len(body["created_at"]) == 24
    assert "gpt2" in body["queue_reason"]


async def test_list_filter_paging_latest_and_history(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    ids = [str((await submit(coordinator, http, funded))["job_id"]) for _ in range(5)]
    url = coordinator.url + "/v1/jobs"
    status, page, _ = await call(http, "GET", url + "?limit=2&offset=1", funded)
    assert status == 200 and page["total"] == 5 and page["has_more"] is True
    assert [j["job_id"] for j in page["jobs"]] == [ids[3], ids[2]]  # newest first
    status, page, _ = await call(http, "GET", url + "?limit=2&offset=4", funded)
    assert [j["job_id"] for j in page["jobs"]] == [ids[0]] and page["has_more"] is False
    await call(http, "DELETE", f"{url}/{ids[1]}", funded)
    _, page, _ = await call(http, "GET", url + "?status=cancelled", funded)
    assert page["total"] == 1 and page["jobs"][0]["job_id"] == ids[1]
    _, page, _ = await call(http, "GET", url + "?status=queued", funded)
    assert page["total"] == 4
    _, latest, _ = await call(http, "GET", url + "/latest", funded)
    assert latest["job_id"] == ids[4]
    today = latest["created_at"][:10]
    status, hist, _ = await call(http, "GET", f"{url}/history?from={today}&to={today}", funded)
    assert status == 200 and hist["count"] == 5 and hist["total_cost"] == 0
    assert {j["job_id"] for j in hist["jobs"]} == set(ids)
    _, hist, _ = await call(http, "GET", f"{url}/history?from=2000-01-01&to=2000-01-02", funded)
    assert hist["count"] == 0 and hist["jobs"] == []


async def test_latest_without_jobs_is_404(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    status, _, _ = await call(http, "GET", coordinator.url + "/v1/jobs/latest", client_key)
    assert status == 404


async def test_rename_and_cancel(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    job = await submit(coordinator, http, funded, max_price=1)
    url = f"{coordinator.url}/v1/jobs/{job['job_id']}"
    status, body, _ = await call(http, "PUT", url, funded, json={"name": "renamed"})
    assert status == 200 and body["name"] == "renamed"
    status, body, _ = await call(http, "DELETE", url, funded)
    assert status == 200 and body["status"] == "cancelled"
    assert await coordinator.balance_uait(funded.address) == (100_000_000, 0)
    status, body, _ = await call(http, "DELETE", url, funded)
    assert status == 409
    for suffix in ("/download", "/receipt"):
        status, _, _ = await call(http, "GET", url + suffix, funded)
        assert status == 409


async def test_other_clients_job_is_404_admin_sees_it(
    coordinator: Coordinator, funded: KeyInfo, admin_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    job = await submit(coordinator, http, funded)
    other = await coordinator.create_key("client")
    url = f"{coordinator.url}/v1/jobs/{job['job_id']}"
    for method in ("GET", "DELETE"):
        status, body, _ = await call(http, method, url, other)
        assert status == 404, body
    status, _, _ = await call(http, "PUT", url, other, json={"name": "x"})
    assert status == 404
    status, body, _ = await call(http, "GET", url, admin_key)
    assert status == 200 and body["job_id"] == job["job_id"]
    # A second key of the same address sees the same jobs.
    same = await coordinator.create_key("client", address=funded.address)
    status, _, _ = await call(http, "GET", url, same)
    assert status == 200


async def test_insufficient_funds_is_402(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(
        http,
        "POST",
        coordinator.url + "/v1/jobs",
        client_key,
        json={"model": "gpt2", "input": "x", "max_price": 1},
    )
    assert status == 402 and body["type"] == "insufficient-funds"
    _, page, _ = await call(http, "GET", coordinator.url + "/v1/jobs", client_key)
    assert page["total"] == 0  # nothing half-written


async def test_fail_if_unmatched_is_422_else_queued(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    body = {"model": "no-such-model", "input": "x", "fail_if_unmatched": True}
    status, problem, _ = await call(http, "POST", coordinator.url + "/v1/jobs", funded, json=body)
    assert status == 422 and problem["errors"][0]["field"] == "model"
    job = await submit(coordinator, http, funded, model="no-such-model")
    assert job["status"] == "queued"


async def test_multipart_submit_and_file_ids(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    form = aiohttp.FormData()
    form.add_field(
        "data", json.dumps({"model": "train", "max_price": 1}), content_type="application/json"
    )
    form.add_field("file", b"a,b\n1,2\n", filename="data.csv", content_type="text/csv")
    status, job, _ = await call(http, "POST", coordinator.url + "/v1/jobs", funded, data=form)
    assert status == 201, job
    _, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job['job_id']}", funded)
    assert body["input_file_id"].startswith("file_")
    import hashlib

    assert body["input_sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()

    form = aiohttp.FormData()
    form.add_field("file", b"\x00\x01binary", filename="w.bin")
    status, up, _ = await call(http, "POST", coordinator.url + "/v1/files", funded, data=form)
    assert status == 201 and up["bytes"] == 8
    assert up["sha256"] == hashlib.sha256(b"\x00\x01binary").hexdigest()
    job = await submit(coordinator, http, funded, input=up["file_id"])
    _, body, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/{job['job_id']}", funded)
    assert body["input_file_id"] == up["file_id"]
    # Another client cannot use that file id.
    other = await coordinator.create_key("client")
    await coordinator.fund(other.address, 10)
    status, _, _ = await call(
        http,
        "POST",
        coordinator.url + "/v1/jobs",
        other,
        json={"model": "gpt2", "input": up["file_id"]},
    )
    assert status == 404


async def test_events_stream_until_the_job_ends(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    job = await submit(coordinator, http, funded)
    url = f"{coordinator.url}/v1/jobs/{job['job_id']}"
    events: list[tuple[str, dict[str, object]]] = []

    async def read() -> None:
        async with http.get(url + "/events", headers=funded.headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            await read_events(resp, events)

    reader = asyncio.create_task(read())
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.02)
    assert events and events[0][0] == "status" and events[0][1]["status"] == "queued"
    await call(http, "DELETE", url, funded)
    await asyncio.wait_for(reader, 10)
    assert events[-1][0] == "end" and events[-1][1]["status"] == "cancelled"
    assert ("status", "cancelled") in [(n, e.get("status")) for n, e in events]


async def test_events_of_an_ended_job_end_at_once(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    job = await submit(coordinator, http, funded)
    url = f"{coordinator.url}/v1/jobs/{job['job_id']}"
    await call(http, "DELETE", url, funded)
    async with http.get(url + "/events", headers=funded.headers) as resp:
        text = await asyncio.wait_for(resp.text(), 5)
    assert "event: end" in text


async def test_testnet_has_its_own_balance(
    coordinator: Coordinator, funded: KeyInfo, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt2", "input": "x", "max_price": 1, "chain_id": "ait-testnet"}
    status, _, _ = await call(http, "POST", coordinator.url + "/v1/jobs", funded, json=body)
    assert status == 402
    await coordinator.fund(funded.address, 1, "ait-testnet")
    status, job, _ = await call(http, "POST", coordinator.url + "/v1/jobs", funded, json=body)
    assert status == 201 and job["chain_id"] == "ait-testnet"
    assert await coordinator.balance_uait(funded.address, "ait-testnet") == (0, 1_000_000)


async def test_events_client_leaving_is_not_an_error(
    coordinator: Coordinator,
    funded: KeyInfo,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from coordinator.appkeys import METRICS

    job = await submit(coordinator, http, funded)
    url = f"{coordinator.url}/v1/jobs/{job['job_id']}"
    resp = await http.get(url + "/events", headers=funded.headers)
    assert (await resp.content.readline()).startswith(b"event: status")
    resp.close()  # the client goes away mid-stream
    await asyncio.sleep(0.1)
    await call(http, "DELETE", url, funded)  # an event the stream now fails to write
    for _ in range(100):
        if coordinator.app[METRICS].sse_streams == 0:
            break
        await asyncio.sleep(0.02)
    assert coordinator.app[METRICS].sse_streams == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
