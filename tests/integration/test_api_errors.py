"""Every status code of SPEC §3's table, and bad input that must never answer 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import MappingProxyType

import aiohttp
import pytest
from ait_harness import Coordinator, CoordinatorFactory, KeyInfo
from api_helpers import call

from coordinator.service.keys import revoke_key
from coordinator.settings import RateLimit


async def test_400_bodies_that_are_not_json_objects(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    url = coordinator.url + "/v1/jobs"
    for body in (b"{not json", b"[1, 2]", b'"text"', b"", b"null", b"\xff\xfe"):
        status, problem, _ = await call(
            http, "POST", url, client_key, data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 400, (body, problem)
        assert problem["type"] == "bad-request"
    for path in ("/v1/faucet", f"/v1/jobs/job_{'0' * 20}"):
        method = "POST" if path == "/v1/faucet" else "PUT"
        status, _, _ = await call(http, method, coordinator.url + path, client_key, data=b"[]")
        assert status == 400


async def test_400_malformed_multipart(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=XYZ"}
    body = b'--XYZ\r\nContent-Disposition: form-data; name="data"\r\n\r\n{not json\r\n--XYZ--\r\n'
    status, _, _ = await call(
        http, "POST", coordinator.url + "/v1/jobs", client_key, data=body, headers=headers
    )
    assert status == 400
    status, _, _ = await call(
        http, "POST", coordinator.url + "/v1/jobs", client_key, data=b"garbage", headers=headers
    )
    assert status == 400
    status, _, _ = await call(
        http, "POST", coordinator.url + "/v1/files", client_key, json={"file": "x"}
    )
    assert status == 400


async def test_401_no_unknown_revoked_key(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    url = coordinator.url + "/v1/me"
    status, problem, _headers = await call(http, "GET", url)
    assert status == 401 and problem["type"] == "unauthorized"
    status, _, _ = await call(http, "GET", url, headers={"Authorization": "Bearer ait_nope"})
    assert status == 401
    status, _, _ = await call(http, "GET", url, headers={"Authorization": "Basic abc"})
    assert status == 401
    status, me, _ = await call(http, "GET", url, headers={"X-Api-Key": client_key.api_key})
    assert status == 200 and me == {
        **me,
        "address": client_key.address,
        "role": "client",
        "key_id": client_key.key_id,
    }
    # Made while the server runs: works at once; revoked: 401 from the next request on.
    fresh = await coordinator.create_key("client")
    assert (await call(http, "GET", url, fresh))[0] == 200
    await revoke_key(coordinator.db, fresh.key_id)
    assert (await call(http, "GET", url, fresh))[0] == 401


async def test_402_403_404_409(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    base = coordinator.url
    body = {"model": "m", "input": 1, "max_price": 0.1}
    assert (await call(http, "POST", base + "/v1/jobs", client_key, json=body))[0] == 402
    other = await coordinator.create_key("client")
    status, problem, _ = await call(
        http, "GET", f"{base}/v1/wallets/{other.address}/balance", client_key
    )
    assert status == 403
    status, problem, _ = await call(
        http,
        "POST",
        base + "/v1/faucet",
        client_key,
        json={"address": client_key.address, "amount": 1, "chain_id": "ait-testnet"},
    )
    assert status == 403 and problem["type"] == "faucet-disabled"
    miner = await coordinator.create_key("miner")
    await coordinator.fund(miner.address, 5)
    status, problem, _ = await call(http, "POST", base + "/v1/jobs", miner, json=body)
    assert status == 403 and problem["type"] == "forbidden"
    form = aiohttp.FormData()
    form.add_field("file", b"x", filename="x")
    assert (await call(http, "POST", base + "/v1/files", miner, data=form))[0] == 403
    assert (await call(http, "GET", base + "/v1/me", miner))[0] == 200
    for path in (
        "/v1/jobs/job_00000000000000000000",
        "/v1/jobs/nope/receipt",
        "/v1/jobs/x/download",
        "/v1/jobs/x/events",
        "/v1/nothing-here",
        "/v1/wallets/not-an-address/balance",
    ):
        status, problem, _ = await call(http, "GET", base + path, client_key)
        assert status == 404, path
    await coordinator.fund(client_key.address, 1)
    status, job, _ = await call(http, "POST", base + "/v1/jobs", client_key, json=body)
    assert status == 201
    url = f"{base}/v1/jobs/{job['job_id']}"
    for suffix in ("/download", "/receipt"):
        status, problem, _ = await call(http, "GET", url + suffix, client_key)
        assert status == 409 and problem["type"] == "conflict"


async def test_405_is_problem_json(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    status, _problem, headers = await call(http, "PATCH", coordinator.url + "/v1/jobs", client_key)
    assert status == 405 and "Allow" in headers


async def test_413_body_over_the_limit(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession
) -> None:
    small = await coordinator_factory(max_body_bytes=4096)
    key = await small.create_key("client")
    await small.fund(key.address, 10)
    big = {"model": "m", "input": "x" * 10_000}
    status, problem, _ = await call(http, "POST", small.url + "/v1/jobs", key, json=big)
    assert status == 413 and problem["type"] == "payload-too-large"
    form = aiohttp.FormData()
    form.add_field("file", b"\0" * 10_000, filename="big.bin")
    assert (await call(http, "POST", small.url + "/v1/files", key, data=form))[0] == 413
    form = aiohttp.FormData()
    form.add_field("data", json.dumps({"model": "m"}))
    form.add_field("file", b"\0" * 10_000, filename="big.bin")
    assert (await call(http, "POST", small.url + "/v1/jobs", key, data=form))[0] == 413

    # Chunked (no Content-Length) is held to the limit too.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    status, _, _ = await call(
        http,
        "POST",
        small.url + "/v1/files",
        key,
        data=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert status in (400, 413)


BAD_SUBMISSIONS = [
    ({"input": "x"}, "model"),
    ({"model": "", "input": "x"}, "model"),
    ({"model": 5, "input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": "x", "priority": "urgent"}, "priority"),
    ({"model": "m", "input": "x", "priority": 1}, "priority"),
    ({"model": "m", "input": "x", "timeout_seconds": -5}, "timeout_seconds"),
    ({"model": "m", "input": "x", "timeout_seconds": "60"}, "timeout_seconds"),
    ({"model": "m", "input": "x", "timeout_seconds": 10**12}, "timeout_seconds"),
    ({"model": "m", "input": "x", "max_price": -1}, "max_price"),
    ({"model": "m", "input": "x", "max_price": 0.0000001}, "max_price"),
    ({"model": "m", "input": "x", "max_price": "1"}, "max_price"),
    ({"model": "m", "input": "x", "max_price": 1e300}, "max_price"),
    ({"model": "m", "input": "x", "chain_id": "no-such-chain"}, "chain_id"),
    ({"model": "m", "input": "x", "chain_id": 7}, "chain_id"),
    ({"model": "m", "input": "x", "requirements": []}, "requirements"),
    ({"model": "m", "input": "x", "requirements": {"gpu_count": 0}}, "requirements.gpu_count"),
    ({"model": "m", "input": "x", "requirements": {"gpu_count": True}}, "requirements.gpu_count"),
    (
        {"model": "m", "input": "x", "requirements": {"min_vram_gb": "16"}},
        "requirements.min_vram_gb",
    ),
    ({"model": "m", "input": "x", "requirements": {"vram": 16}}, "requirements.vram"),
    ({"model": "m", "input": "x", "output_config": "local"}, "output_config"),
    ({"model": "m", "input": "x", "params": [1]}, "params"),
    ({"model": "m", "input": "x", "name": 3}, "name"),
    ({"model": "m", "input": "x", "name": "n" * 500}, "name"),
    ({"model": "m", "input": "x", "fail_if_unmatched": "yes"}, "fail_if_unmatched"),
    ({"model": "m", "input": "x", "colour": "blue"}, "colour"),
]


@pytest.mark.parametrize(("body", "field"), BAD_SUBMISSIONS)
async def test_422_names_each_bad_field(
    coordinator: Coordinator,
    client_key: KeyInfo,
    http: aiohttp.ClientSession,
    body: dict[str, object],
    field: str,
) -> None:
    status, problem, _ = await call(
        http, "POST", coordinator.url + "/v1/jobs", client_key, json=body
    )
    assert status == 422, problem
    assert field in [e["field"] for e in problem["errors"]], problem


async def test_422_lists_several_fields_at_once(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    body = {"model": 1, "priority": "x", "extra": 1}
    _, problem, _ = await call(http, "POST", coordinator.url + "/v1/jobs", client_key, json=body)
    assert {e["field"] for e in problem["errors"]} == {"model", "priority", "extra", "input"}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=99999999999999999999",
        "offset=-1",
        "status=sleeping",
        "colour=blue",
    ],
)
async def test_422_bad_list_queries(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession, query: str
) -> None:
    status, _, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs?{query}", client_key)
    assert status == 422


@pytest.mark.parametrize(
    "query",
    [
        "from=2026-13-01",
        "from=yesterday",
        "to=2026-02-30",
        "from=2026-03-01&to=2026-02-01",
        "from=99999-01-01",
        "to=2026-01-01T25:00:00Z",
        "since=2026-01-01",
    ],
)
async def test_422_bad_dates(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession, query: str
) -> None:
    status, _, _ = await call(http, "GET", f"{coordinator.url}/v1/jobs/history?{query}", client_key)
    assert status == 422
    path = f"/v1/wallets/{client_key.address}/history?{query}"
    status, _, _ = await call(http, "GET", coordinator.url + path, client_key)
    assert status == 422 or "from=2026-03-01" in query


async def test_422_wallet_and_faucet_inputs(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    base = coordinator.url
    path = f"{base}/v1/wallets/{client_key.address}/balance?chain_id=nope"
    assert (await call(http, "GET", path, client_key))[0] == 422
    for body in (
        {"address": client_key.address, "amount": 1001},
        {"address": client_key.address, "amount": 0},
        {"address": client_key.address, "amount": -3},
        {"address": client_key.address, "amount": "5"},
        {"address": "ait1xyz", "amount": 1},
        {"address": client_key.address, "amount": 1, "chain_id": "nope"},
        {"address": client_key.address, "amount": 1, "extra": True},
        {"address": client_key.address},
    ):
        status, problem, _ = await call(http, "POST", base + "/v1/faucet", client_key, json=body)
        assert status == 422, (body, problem)


FUZZ_BODIES = [
    b"{}",
    b'{"model": null, "input": null}',
    b'{"model": {"a": 1}, "input": [[[]]]}',
    b'{"model": "m", "input": 1e309}',
    b'{"model": "m", "input": "x", "params": {"a": 1e400}}',
    b'{"model": "m\\u0000", "input": "x"}',
    b'{"model": "' + b"m" * 10_000 + b'", "input": 1}',
    b'{"model": "m", "input": "x", "requirements": {"gpu_type": ["a"]}}',
    b'{"model": "m", "input": "x", "timeout_seconds": 1.5}',
    b'{"model": "m", "input": "x", "max_price": NaN}',
    b"[" * 5000 + b"]" * 5000,
    b'{"model": "m", "input": "file_00000000000000000000"}',
]


async def test_fuzz_never_500(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    await coordinator.fund(client_key.address, 5)
    for body in FUZZ_BODIES:
        for path, method in (
            ("/v1/jobs", "POST"),
            ("/v1/faucet", "POST"),
            ("/v1/jobs/job_x", "PUT"),
        ):
            status, _, _ = await call(
                http,
                method,
                coordinator.url + path,
                client_key,
                data=body,
                headers={"Content-Type": "application/json"},
            )
            assert status < 500  # `call` also checks the problem+json shape


async def test_429_after_the_per_minute_limit(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession
) -> None:
    limits = MappingProxyType({"client": RateLimit(5, 100), "admin": RateLimit(0, 0)})
    limited = await coordinator_factory(rate_limits=limits)
    key = await limited.create_key("client")
    admin = await limited.create_key("admin")
    url = limited.url + "/v1/me"
    remaining = []
    for _ in range(5):
        status, _, headers = await call(http, "GET", url, key)
        assert status == 200 and headers["X-RateLimit-Limit"] == "5"
        remaining.append(int(headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    status, problem, headers = await call(http, "GET", url, key)
    assert status == 429 and problem["type"] == "rate-limited"
    assert 1 <= int(headers["Retry-After"]) <= 60 and headers["X-RateLimit-Remaining"] == "0"
    # Other keys and unlimited roles are not affected; errors count too (a 404 is a request).
    other = await limited.create_key("client")
    assert (await call(http, "GET", url, other))[0] == 200
    for _ in range(20):
        status, _, headers = await call(http, "GET", url, admin)
        assert status == 200 and "X-RateLimit-Limit" not in headers
    # Public endpoints need no key and are not limited.
    assert (await call(http, "GET", limited.url + "/healthz"))[0] == 200


def test_sliding_windows_exactly() -> None:
    """The limiter alone, with explicit times: 60/min and 1000/h as sliding windows."""
    from coordinator.ratelimit import RateLimiter

    limiter, limit = RateLimiter(), RateLimit(60, 1000)
    for i in range(60):
        assert limiter.check("k", limit, now=1000.0 + i * 0.5).allowed
    blocked = limiter.check("k", limit, now=1030.0)
    assert not blocked.allowed and blocked.retry_after_s == 30  # first hit leaves at 1060
    assert limiter.check("k", limit, now=1060.0).allowed  # the window slid by one
    assert not limiter.check("k", limit, now=1060.1).allowed
    # Hourly: 1000 spread thinly (never 60 in a minute), then the 1001st waits.
    hourly = RateLimiter()
    for i in range(1000):
        assert hourly.check("h", limit, now=i * 3.0).allowed
    late = hourly.check("h", limit, now=3000.0)
    assert not late.allowed and late.retry_after_s == 600  # 0 + 3600 - 3000
    assert RateLimiter().check("u", RateLimit(0, 0)).allowed
