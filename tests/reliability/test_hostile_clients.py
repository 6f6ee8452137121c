"""Hostile REST clients against a real coordinator (SPEC §2, §3): cross-tenant reads and
writes, revoked keys, rate-limit bypass attempts, path traversal in uploaded file names,
job ids and downloads. Nothing answers 5xx, nothing leaks, no limit is lifted.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from hostile_miner import HostileMiner
from reliability_cluster import record
from yarl import URL

from chain.receipts import build_receipt, sign_receipt
from client.sdk import CoordinatorClient
from coordinator.service.keys import revoke_key
from coordinator.settings import RateLimit
from protocol.canonical import sha256_hex
from protocol.keys import public_key_hex
from protocol.messages import Ack, Assign, Result
from protocol.timefmt import iso_ms, now_ms

pytestmark = pytest.mark.timeout(120)

CLIENT_LIMIT = 5  # per minute, for the rate-limit tests


async def _call(
    http: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    headers: dict[str, str],
    **kw: Any,
) -> tuple[int, Any, Any]:
    async with http.request(method, url, headers=headers, **kw) as r:
        body = await r.read()
        assert r.status < 500, (method, url, r.status, body[:500])
        try:
            data = json.loads(body)
        except ValueError:
            data = body
        return r.status, data, r.headers


def _files_under(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


def _exists(path: str) -> bool:
    return Path(path).exists()


async def test_cross_tenant_reads_and_writes_answer_404(
    coordinator: Any, http: aiohttp.ClientSession
) -> None:
    alice = await coordinator.create_key("client")
    bob = await coordinator.create_key("client")
    await coordinator.fund(alice.address, 10)
    await coordinator.fund(bob.address, 10)
    base = coordinator.url
    form = aiohttp.FormData()
    form.add_field("file", b"alice's secret", filename="secret.txt")
    status, uploaded, _ = await _call(http, "POST", base + "/v1/files", alice.headers, data=form)
    assert status == 201, uploaded
    status, job, _ = await _call(
        http, "POST", base + "/v1/jobs", alice.headers, json={"model": "echo", "input": "mine"}
    )
    assert status == 201, job
    job_id = job["job_id"]

    probes = [
        ("GET", f"/v1/jobs/{job_id}", None),
        ("PUT", f"/v1/jobs/{job_id}", {"name": "pwned"}),
        ("DELETE", f"/v1/jobs/{job_id}", None),
        ("GET", f"/v1/jobs/{job_id}/download", None),
        ("GET", f"/v1/jobs/{job_id}/receipt", None),
        ("GET", f"/v1/jobs/{job_id}/events", None),
    ]
    for method, path, body in probes:
        status, data, headers = await _call(http, method, base + path, bob.headers, json=body)
        assert status == 404, (method, path, status, data)
        assert headers["Content-Type"].startswith("application/problem+json")
    # Bob's job may not take Alice's file as its input (echo would hand it back to him).
    status, data, _ = await _call(
        http, "POST", base + "/v1/jobs", bob.headers,
        json={"model": "echo", "input": uploaded["file_id"]},
    )  # fmt: skip
    if status == 201:  # accepted as a plain string input, never as Alice's file
        _, bob_job, _ = await _call(http, "GET", f"{base}/v1/jobs/{data['job_id']}", bob.headers)
        assert bob_job.get("input_file_id") is None, bob_job
    else:
        assert status in (404, 422), data
    for path in ("/v1/jobs", "/v1/jobs/latest", "/v1/jobs/history"):
        status, data, _ = await _call(http, "GET", base + path, bob.headers)
        assert job_id not in json.dumps(data), (path, data)
    for path in (f"/v1/wallets/{alice.address}/balance", f"/v1/wallets/{alice.address}/history"):
        status, data, _ = await _call(http, "GET", base + path, bob.headers)
        assert status in (403, 404), (path, status, data)
    # Alice's job is untouched.
    status, mine, _ = await _call(http, "GET", f"{base}/v1/jobs/{job_id}", alice.headers)
    assert status == 200 and mine["status"] == "queued" and mine["name"] is None
    record("cross_tenant", {"probes_answered_404": len(probes), "wallet_probes_refused": 2})


async def test_revoked_keys_are_refused_in_every_spelling(
    coordinator: Any, http: aiohttp.ClientSession
) -> None:
    first = await coordinator.create_key("client")
    second = await coordinator.create_key("client", address=first.address)
    await coordinator.fund(first.address, 10)
    url = coordinator.url + "/v1/jobs"
    body = {"model": "echo", "input": 1}
    status, job, _ = await _call(http, "POST", url, first.headers, json=body)
    assert status == 201
    await revoke_key(coordinator.db, first.key_id)
    spellings = [
        {"Authorization": f"Bearer {first.api_key}"},
        {"authorization": f"bearer {first.api_key}"},
        {"Authorization": f"BEARER   {first.api_key}  "},
        {"X-Api-Key": first.api_key},
        {"x-api-key": first.api_key},
        {"X-API-KEY": first.api_key},
        {"Authorization": f"Bearer {first.api_key}", "X-Api-Key": first.api_key},
    ]
    for headers in spellings:
        for method, payload in (("GET", None), ("POST", {"model": "echo", "input": 2})):
            status, data, _ = await _call(http, method, url, headers, json=payload)
            assert status == 401, (headers.keys(), method, status, data)
    # The address's other key still works and still sees the job.
    status, page, _ = await _call(http, "GET", url, second.headers)
    assert status == 200 and job["job_id"] in {j["job_id"] for j in page["jobs"]}
    record("revoked_keys", {"spellings_refused": len(spellings) * 2})


async def test_rate_limits_are_per_key_and_not_bypassed(
    coordinator_factory: Callable[..., Awaitable[Any]], http: aiohttp.ClientSession
) -> None:
    limits = MappingProxyType(
        {
            "client": RateLimit(CLIENT_LIMIT, 1000),
            "miner": RateLimit(0, 0),
            "admin": RateLimit(0, 0),
        }
    )
    coordinator = await coordinator_factory(rate_limits=limits)
    keys = [await coordinator.create_key("client")]
    for _ in range(3):  # more keys of the same address
        keys.append(await coordinator.create_key("client", address=keys[0].address))
    url = coordinator.url + "/v1/me"
    limited = keys[0].api_key
    for n in range(CLIENT_LIMIT):
        status, _, headers = await _call(http, "GET", url, keys[0].headers)
        assert status == 200 and headers["X-RateLimit-Remaining"] == str(CLIENT_LIMIT - n - 1)
    status, problem, headers = await _call(http, "GET", url, keys[0].headers)
    assert status == 429 and int(headers["Retry-After"]) >= 1, problem

    bypasses = [
        {"authorization": f"bearer {limited}"},
        {"Authorization": f"BEARER {limited}"},
        {"Authorization": f"Bearer  {limited} "},
        {"X-Api-Key": limited},
        {"X-API-KEY": limited},
        {"x-api-key": f" {limited} "},
        {"Authorization": f"Bearer {limited}", "X-Api-Key": keys[1].api_key},
        {"Authorization": f"Basic {limited}", "X-Api-Key": limited},
        {"Authorization": f"Bearer {limited}", "X-Forwarded-For": "10.9.8.7"},
    ]
    refused = 0
    for headers in bypasses:
        status, data, _ = await _call(http, "GET", url, headers)
        assert status == 429, (headers, status, data)
        refused += 1
    # Unsupported places for a key do not authenticate at all.
    for target, headers in (
        (f"{url}?api_key={limited}", {}),
        (url, {"Authorization": limited}),
        (url, {"Cookie": f"api_key={limited}"}),
    ):
        status, _, _ = await _call(http, "GET", target, headers)
        assert status == 401
    # Other keys of the same address have their own window; using them lifts nothing.
    for key in keys[1:]:
        status, _, _ = await _call(http, "GET", url, key.headers)
        assert status == 200
    status, _, _ = await _call(http, "GET", url, keys[0].headers)
    assert status == 429
    # A burst on one key: exactly the limit gets through, concurrently too.
    answers = await asyncio.gather(
        *(_call(http, "GET", url, keys[1].headers) for _ in range(CLIENT_LIMIT * 4))
    )
    assert sum(a[0] == 200 for a in answers) == CLIENT_LIMIT - 1  # one used just above
    assert all(a[0] in (200, 429) for a in answers)
    record("rate_limit_bypass", {"bypass_attempts_refused": refused, "burst": CLIENT_LIMIT * 4})


async def test_path_traversal_in_file_names_job_ids_and_downloads(
    coordinator: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    alice = await coordinator.create_key("client")
    await coordinator.fund(alice.address, 10)
    base = coordinator.url
    data_dir = Path(coordinator.settings.data_dir)
    before = _files_under(data_dir.parent)
    names = [
        "../../../../tmp/ait-evil.txt",
        "..\\..\\..\\windows\\win.ini",
        "/etc/passwd",
        "....//....//evil",
        "%2e%2e%2fevil",
        "..",
        "evil\u202etxt.exe",
    ]
    file_ids = []
    for name in names:
        form = aiohttp.FormData()
        form.add_field("file", b"payload", filename=name)
        status, data, _ = await _call(http, "POST", base + "/v1/files", alice.headers, data=form)
        assert status in (201, 400, 422), (name, status, data)
        if status == 201:
            assert data["file_id"].startswith("file_") and "/" not in data["file_id"]
            file_ids.append(data["file_id"])
    assert not _exists("/tmp/ait-evil.txt")
    created = _files_under(data_dir.parent) - before
    assert all(p.resolve().is_relative_to(data_dir.parent.resolve()) for p in created)

    # Traversal in the job id: never a file, never a 5xx.
    for raw in (
        "/v1/jobs/..%2F..%2F..%2Fetc%2Fpasswd/download",
        "/v1/jobs/%2e%2e/download",
        "/v1/jobs/job_x%00/download",
        "/v1/jobs/..%5C..%5Cwin.ini/download",
        "/v1/files/..%2F..%2Fetc%2Fpasswd",
    ):
        status, data, _ = await _call(http, "GET", URL(base + raw, encoded=True), alice.headers)
        assert status in (400, 404, 405, 422), (raw, status)
        assert b"root:" not in (data if isinstance(data, bytes) else json.dumps(data).encode())

    # A hostile miner names its output "..": the download is still a plain file in the
    # directory asked for, with a safe Content-Disposition.
    miner_key = await coordinator.create_key("miner")
    miner = await HostileMiner.connect(base, miner_key.api_key)
    status, job, _ = await _call(
        http, "POST", base + "/v1/jobs", alice.headers, json={"model": "echo", "input": "x"}
    )
    assert status == 201, job
    assign = await miner.recv(Assign)
    output = b'"x"'
    now = iso_ms(now_ms())
    assert now is not None
    receipt = build_receipt(
        job_id=assign.job_id,
        chain_id=assign.chain_id,
        miner_address=miner.welcome.address,
        client_address=assign.client_address,
        model=assign.model,
        input_sha256=assign.input_sha256,
        output_sha256=sha256_hex(output),
        units=len(output),
        unit=assign.unit,
        price_uait_per_unit=assign.price_uait_per_unit,
        attempt=assign.attempt,
        started_at=now,
        completed_at=now,
        public_key=public_key_hex(miner.key),
    )
    await miner.send(
        Result(
            job_id=assign.job_id,
            receipt=receipt,
            signature=sign_receipt(miner.key, receipt),
            output_b64=base64.b64encode(output).decode(),
            content_type="application/json",
            filename="..",
        )
    )
    await miner.recv(Ack)
    status, body, headers = await _call(
        http, "GET", f"{base}/v1/jobs/{job['job_id']}/download", alice.headers
    )
    assert status == 200 and body == json.loads(output)
    disposition = headers["Content-Disposition"]
    assert '".."' not in disposition and "/" not in disposition, disposition
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    async with CoordinatorClient(base, alice.api_key) as sdk:
        path = await sdk.download(job["job_id"], downloads)
    assert path.parent.resolve() == downloads.resolve() and path.read_bytes() == output
    await miner.ws.close()
    record(
        "path_traversal",
        {"upload_names": len(names), "accepted_as_opaque_names": len(file_ids), "id_probes": 5},
    )


async def test_nul_and_control_characters_never_answer_5xx(
    coordinator: Any, http: aiohttp.ClientSession
) -> None:
    """PostgreSQL text cannot hold NUL: every place a string reaches the database must
    refuse it (422/404), never fail with a 500."""
    alice = await coordinator.create_key("client")
    await coordinator.fund(alice.address, 10)
    base = coordinator.url
    status, job, _ = await _call(
        http, "POST", base + "/v1/jobs", alice.headers, json={"model": "echo", "input": "x"}
    )
    assert status == 201
    probes: list[tuple[str, str, Any]] = [
        ("GET", "/v1/jobs/job_x%00", None),
        ("DELETE", "/v1/jobs/job_x%00", None),
        ("GET", "/v1/jobs/job_x%00/receipt", None),
        ("GET", "/v1/chain/ait%00/blocks", None),
        ("GET", f"/v1/wallets/{alice.address}/history?chain_id=a%00", None),
        ("GET", "/v1/jobs?status=queued%00", None),
        ("POST", "/v1/jobs", {"model": "ech\u0000o", "input": "x"}),
        ("POST", "/v1/jobs", {"model": "echo", "input": "x", "name": "n\u0000"}),
        ("POST", "/v1/jobs", {"model": "echo", "input": "x", "chain_id": "ait\u0000"}),
        ("POST", "/v1/jobs", {"model": "echo", "input": "x", "priority": "high\u0000"}),
        ("PUT", f"/v1/jobs/{job['job_id']}", {"name": "a\u0000b"}),
        ("POST", "/v1/faucet", {"address": alice.address, "amount": 1, "chain_id": "x\u0000"}),
    ]
    for method, path, body in probes:
        status, data, _ = await _call(
            http, method, URL(base + path, encoded=True), alice.headers, json=body
        )
        assert status in (400, 404, 422), (method, path, body, status, data)
    # JSON values may carry NUL (they are stored as escaped JSON text).
    status, data, _ = await _call(
        http, "POST", base + "/v1/jobs", alice.headers,
        json={"model": "echo", "input": {"k\u0000": "\u0000"}, "params": {"a\u0000": 1}},
    )  # fmt: skip
    assert status == 201, data
    record("control_characters", {"probes_refused": len(probes)})
