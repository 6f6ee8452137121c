"""Several coordinators on one database (conftest `coordinator_factory`, SQLite file and
PostgreSQL): every transfer is sealed exactly once, heights stay contiguous, and the
chain verifies with the one coordinator key — also when a process holds another key."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from ait_harness import Coordinator, CoordinatorFactory, KeyInfo

from chain.verify import verify_chain
from protocol.money import ait_to_uait

CHAIN = "ait-devnet"


async def _json(
    http: aiohttp.ClientSession, method: str, url: str, key: KeyInfo, body: Any = None
) -> Any:
    async with http.request(method, url, json=body, headers=key.headers) as response:
        data = await response.json(content_type=None)
        assert response.status == 200, data
        return data


async def _blocks(http: aiohttp.ClientSession, c: Coordinator, key: KeyInfo) -> list[Any]:
    blocks: list[Any] = []
    while True:
        page = await _json(
            http, "GET", f"{c.url}/v1/chain/{CHAIN}/blocks?from_height={len(blocks)}", key
        )
        blocks.extend(page["blocks"])
        if not page["has_more"]:
            return blocks


async def _mint_everywhere(
    http: aiohttp.ClientSession,
    coordinators: list[Coordinator],
    keys: list[KeyInfo],
    address: str,
    rounds: int,
) -> set[str]:
    minted: set[str] = set()

    async def one(c: Coordinator, key: KeyInfo) -> None:
        for _ in range(rounds):
            body = {"address": address, "amount": 1, "chain_id": CHAIN}
            minted.add((await _json(http, "POST", f"{c.url}/v1/faucet", key, body))["transfer_id"])

    await asyncio.gather(*(one(c, k) for c, k in zip(coordinators, keys, strict=True)))
    return minted


async def _until_sealed(
    http: aiohttp.ClientSession, c: Coordinator, key: KeyInfo, minted: set[str]
) -> list[Any]:
    deadline = time.monotonic() + 5
    while True:
        blocks = await _blocks(http, c, key)
        sealed = [e["transfer_id"] for b in blocks for e in b["entries"]]
        if minted <= set(sealed):
            assert len(sealed) == len(set(sealed)), "a transfer is in two blocks"
            return blocks
        assert time.monotonic() < deadline, f"{len(minted - set(sealed))} transfers unsealed"
        await asyncio.sleep(0.1)


async def test_coordinators_sharing_a_key_seal_one_chain(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession
) -> None:
    first = await coordinator_factory(block_interval_seconds=0.2)
    # Same data dir: the same coordinator.key (as every process of one deployment must).
    second = await coordinator_factory(data_dir=first.settings.data_dir, block_interval_seconds=0.2)
    key_a = await first.create_key("admin")
    key_b = await second.create_key("admin")
    pub_a = (await _json(http, "GET", f"{first.url}/v1/chains", key_a))["coordinator_public_key"]
    pub_b = (await _json(http, "GET", f"{second.url}/v1/chains", key_b))["coordinator_public_key"]
    assert pub_a == pub_b

    minted = await _mint_everywhere(http, [first, second], [key_a, key_b], key_a.address, 12)
    blocks = await _until_sealed(http, first, key_a, minted)
    assert await _blocks(http, second, key_b) == blocks
    available, held = await first.balance_uait(key_a.address)
    report = verify_chain(blocks, pub_a, {key_a.address: {"available": available, "held": held}})
    assert report.ok, [str(f) for f in report.failures]
    assert report.minted_uait == ait_to_uait(24) == available


async def test_a_process_with_another_key_never_signs_the_chain(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession
) -> None:
    first = await coordinator_factory(block_interval_seconds=0.2)
    key_a = await first.create_key("admin")
    pub_a = (await _json(http, "GET", f"{first.url}/v1/chains", key_a))["coordinator_public_key"]
    # The genesis block is sealed by the first process before the second one starts.
    await _until_sealed(
        http, first, key_a, await _mint_everywhere(http, [first], [key_a], key_a.address, 1)
    )
    second = await coordinator_factory(block_interval_seconds=0.2)  # its own data dir and key
    key_b = await second.create_key("admin")
    minted = await _mint_everywhere(http, [first, second], [key_a, key_b], key_a.address, 6)
    blocks = await _until_sealed(http, first, key_a, minted)
    assert {b["signature"]["public_key"] for b in blocks} == {pub_a}
    report = verify_chain(blocks, pub_a)
    assert report.ok, [str(f) for f in report.failures]
