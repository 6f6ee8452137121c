"""The fixtures work and the main path answers, on SQLite and PostgreSQL."""

from __future__ import annotations

import aiohttp
from ait_harness import Coordinator, KeyInfo


async def test_submit_and_read_back(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    await coordinator.fund(client_key.address, 10)
    async with http.post(
        coordinator.url + "/v1/jobs",
        json={"model": "gpt2", "input": "hello", "max_price": 1},
        headers=client_key.headers,
    ) as resp:
        assert resp.status == 201, await resp.text()
        job = await resp.json()
    assert job["status"] == "queued" and job["estimated_cost"] == 1.0
    async with http.get(
        f"{coordinator.url}/v1/jobs/{job['job_id']}", headers=client_key.headers
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["queue_reason"]
    assert await coordinator.balance_uait(client_key.address) == (9_000_000, 1_000_000)
