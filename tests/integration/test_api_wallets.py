"""Wallets, faucet, chains, /v1/me, marketplace views and the operations endpoints."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from ait_harness import Coordinator, KeyInfo
from api_helpers import call
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.db.migrations import LATEST_VERSION
from coordinator.db.schema import schema_version
from protocol.keys import public_key_hex


async def test_balance_faucet_history(
    coordinator: Coordinator,
    client_key: KeyInfo,
    admin_key: KeyInfo,
    http: aiohttp.ClientSession,
) -> None:
    base = coordinator.url
    addr = client_key.address
    status, bal, _ = await call(http, "GET", f"{base}/v1/wallets/{addr}/balance", client_key)
    assert status == 200
    assert bal == {
        **bal,
        "address": addr,
        "chain_id": "ait-devnet",
        "balance": 0,
        "held": 0,
        "available": 0,
    }
    status, minted, _ = await call(
        http,
        "POST",
        base + "/v1/faucet",
        client_key,
        json={"address": addr, "amount": 1000, "chain_id": "ait-devnet"},
    )
    assert status == 200 and minted["amount"] == 1000 and minted["available"] == 1000
    status, minted, _ = await call(
        http, "POST", base + "/v1/faucet", client_key, json={"address": addr, "amount": 0.123456}
    )
    assert status == 200 and minted["balance"] == 1000.123456
    status, job, _ = await call(
        http,
        "POST",
        base + "/v1/jobs",
        client_key,
        json={"model": "m", "input": "x", "max_price": 0.5},
    )
    assert status == 201
    _, bal, _ = await call(http, "GET", f"{base}/v1/wallets/{addr}/balance", client_key)
    assert (bal["balance"], bal["held"], bal["available"]) == (1000.123456, 0.5, 999.623456)
    # Any well-formed address answers (zeros); an admin may read any address.
    nobody = "ait1" + "9" * 40
    status, bal, _ = await call(http, "GET", f"{base}/v1/wallets/{nobody}/balance", admin_key)
    assert status == 200 and bal["balance"] == 0
    status, bal, _ = await call(
        http, "GET", f"{base}/v1/wallets/{addr}/balance?chain_id=ait-testnet", admin_key
    )
    assert status == 200 and bal["chain_id"] == "ait-testnet" and bal["balance"] == 0

    status, hist, _ = await call(http, "GET", f"{base}/v1/wallets/{addr}/history", client_key)
    assert status == 200 and hist["total"] == 3
    assert [e["kind"] for e in hist["entries"]] == ["hold", "mint", "mint"]  # newest first
    hold = hist["entries"][0]
    assert hold["job_id"] == job["job_id"] and hold["amount"] == 0.5
    assert hold["debit"]["kind"] == "available" and hold["credit"]["kind"] == "escrow"
    day = hold["created_at"][:10]
    path = f"{base}/v1/wallets/{addr}/history?chain_id=ait-devnet&from={day}&to={day}&limit=1"
    _, hist, _ = await call(http, "GET", path, client_key)
    assert len(hist["entries"]) == 1 and hist["has_more"] is True
    path = f"{base}/v1/wallets/{addr}/history?from=2001-01-01&to=2001-01-01"
    _, hist, _ = await call(http, "GET", path, client_key)
    assert hist["entries"] == [] and hist["total"] == 0
    _, hist, _ = await call(
        http, "GET", f"{base}/v1/wallets/{addr}/history?chain_id=ait-testnet", client_key
    )
    assert hist["total"] == 0


async def test_faucet_may_fund_another_address(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    other = "ait1" + "7" * 40
    status, _, _ = await call(
        http,
        "POST",
        coordinator.url + "/v1/faucet",
        client_key,
        json={"address": other, "amount": 3},
    )
    assert status == 200
    assert await coordinator.balance_uait(other) == (3_000_000, 0)


async def test_me_chains_views(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    base = coordinator.url
    _, me, _ = await call(http, "GET", base + "/v1/me", client_key)
    assert (me["address"], me["role"], me["key_id"]) == (
        client_key.address,
        "client",
        client_key.key_id,
    )
    status, chains, _ = await call(http, "GET", base + "/v1/chains", client_key)
    assert status == 200
    by_id = {c["chain_id"]: c for c in chains["chains"]}
    assert by_id["ait-devnet"]["faucet"] is True and by_id["ait-testnet"]["faucet"] is False
    assert by_id["ait-devnet"]["default"] is True
    from coordinator.appkeys import COORDINATOR_KEY

    key_hex = public_key_hex(coordinator.app[COORDINATOR_KEY])
    assert by_id["ait-devnet"]["coordinator_public_key"] == key_hex
    status, miners, _ = await call(http, "GET", base + "/v1/miners", client_key)
    assert status == 200 and miners == {"miners": []}
    status, models, _ = await call(http, "GET", base + "/v1/models", client_key)
    assert status == 200 and models == {"models": []}
    for path in ("/v1/chains", "/v1/miners", "/v1/models", "/v1/me"):
        assert (await call(http, "GET", base + path))[0] == 401


async def test_operations_endpoints_need_no_key(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    base = coordinator.url
    assert (await call(http, "GET", base + "/healthz"))[0] == 200
    status, ready, _ = await call(http, "GET", base + "/readyz")
    assert status == 200 and ready["database"] in ("sqlite", "postgresql")
    await call(http, "GET", base + "/v1/me", client_key)
    await coordinator.fund(client_key.address, 1)
    await call(http, "POST", base + "/v1/jobs", client_key, json={"model": "m", "input": 1})
    status, text, headers = await call(http, "GET", base + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'ait_http_requests_total{method="GET",route="/v1/me",status="200"} 1' in text
    assert 'ait_jobs{status="queued"} 1' in text
    assert "# TYPE ait_jobs gauge" in text
    assert 'ait_db_coalesced_requests_total{kind="admit_many"} 1' in text
    assert 'ait_db_coalesced_writes_total{kind="admit_many"} 1' in text
    # Every committed transaction is in the commit-time histogram's +Inf bucket.
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    assert "# TYPE ait_db_commit_seconds histogram" in text
    commits = samples["ait_db_commits_total"]
    assert int(commits) >= 1
    assert samples['ait_db_commit_seconds_bucket{le="+Inf"}'] == commits
    assert samples["ait_db_commit_seconds_count"] == commits
    status, doc, _ = await call(http, "GET", base + "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")


async def test_metrics_time_how_long_the_event_loop_was_held(
    coordinator: Coordinator, http: aiohttp.ClientSession
) -> None:
    """Holding the loop for 200 ms makes the lag timer (due every 50 ms) fire 150-200 ms
    late: the histogram counts a firing above 100 ms (the test shares the coordinator's
    event loop)."""

    async def over_100ms() -> float:
        _, text, _ = await call(http, "GET", coordinator.url + "/metrics")
        assert "# TYPE ait_event_loop_lag_seconds histogram" in text
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
        total = float(samples['ait_event_loop_lag_seconds_bucket{le="+Inf"}'])
        return total - float(samples['ait_event_loop_lag_seconds_bucket{le="0.1"}'])

    before = await over_100ms()
    time.sleep(0.2)  # noqa: ASYNC251 - holds the loop, as a long write transaction would
    for _ in range(40):  # the timer fires once the loop is free (every 50 ms)
        if await over_100ms() > before:
            break
        await asyncio.sleep(0.05)
    assert await over_100ms() >= before + 1


async def test_readyz_is_503_without_a_writer(
    coordinator: Coordinator, http: aiohttp.ClientSession
) -> None:
    await coordinator.db.writer.stop()
    async with http.get(coordinator.url + "/readyz") as resp:
        assert resp.status == 503
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert (await resp.json(content_type=None))["type"] == "unavailable"
    assert (await call(http, "GET", coordinator.url + "/healthz"))[0] == 200


async def test_readyz_is_503_while_a_newer_coordinator_owns_the_schema(
    coordinator: Coordinator, http: aiohttp.ClientSession
) -> None:
    """A rolling upgrade: a coordinator of a newer release migrates the shared database
    while this one still runs. This one stops answering ready (its statements may no
    longer fit the tables), and is ready again if the newer version is gone."""
    newer = LATEST_VERSION + 1

    async def stamp(conn: AsyncConnection) -> None:
        await conn.execute(
            schema_version.insert(), {"version": newer, "name": "from a newer release",
                                      "applied_at_ms": 0},
        )  # fmt: skip

    async def unstamp(conn: AsyncConnection) -> None:
        await conn.execute(delete(schema_version).where(schema_version.c.version == newer))

    assert (await call(http, "GET", coordinator.url + "/readyz"))[0] == 200
    await coordinator.db.write(stamp)
    async with http.get(coordinator.url + "/readyz") as resp:
        assert resp.status == 503
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        problem = await resp.json(content_type=None)
    assert problem["type"] == "unavailable"
    assert f"database schema version {newer} is newer than this coordinator" in problem["detail"]
    assert (await call(http, "GET", coordinator.url + "/healthz"))[0] == 200
    await coordinator.db.write(unstamp)
    assert (await call(http, "GET", coordinator.url + "/readyz"))[0] == 200
