"""The block log through a real coordinator (tests/conftest.py `coordinator`: create_app on
127.0.0.1 port 0, over SQLite and PostgreSQL) and a real in-process miner daemon: faucet
mints and settled jobs are sealed within 2 s, receipts come with Merkle proofs, the chain
endpoints answer as documented, and verify_chain passes against the live balances."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from ait_harness import Coordinator, CoordinatorFactory, KeyInfo

from chain.blocks import block_hash, verify_header_signature
from chain.merkle import verify_proof
from chain.verify import verify_chain
from coordinator.service.sealer import HELPER_MIN_ENTRIES
from miner.config import MinerSettings
from miner.daemon import MinerDaemon
from miner.runtime.base import ModelSpec
from protocol.keys import address_of, generate_private_key
from protocol.money import ait_to_uait

CHAIN = "ait-devnet"
SEAL_DEADLINE_S = 2.0  # SPEC: a settled job is in a block within 2 seconds
ECHO = ModelSpec("echo", "echo", None, 3, "byte", {})  # 3 micro-AIT per output byte


async def _until(check: Callable[[], Awaitable[Any]], within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _call(
    http: aiohttp.ClientSession,
    c: Coordinator,
    method: str,
    path: str,
    key: KeyInfo | None,
    body: Any = None,
    expect: int = 200,
    **params: str,
) -> Any:
    headers = key.headers if key else {}
    async with http.request(
        method, c.url + path, json=body, headers=headers, params=params
    ) as response:
        data = await response.json(content_type=None)
        assert response.status == expect, (method, path, params, response.status, data)
        return data


async def _all_blocks(
    http: aiohttp.ClientSession, c: Coordinator, key: KeyInfo, limit: int = 100
) -> list[Any]:
    blocks: list[Any] = []
    while True:
        page = await _call(
            http,
            c,
            "GET",
            f"/v1/chain/{CHAIN}/blocks",
            key,
            from_height=str(len(blocks)),
            limit=str(limit),
        )
        blocks.extend(page["blocks"])
        if not page["has_more"]:
            assert page["next_from_height"] is None
            return blocks
        assert page["next_from_height"] == len(blocks)


async def _audit(http: aiohttp.ClientSession, c: Coordinator, admin: KeyInfo) -> Any:
    """verify_chain over every block, against the live balance of every address in it."""
    chains = await _call(http, c, "GET", "/v1/chains", admin)
    blocks = await _all_blocks(http, c, admin)
    addresses = {
        e[side]["address"] for b in blocks for e in b["entries"] for side in ("debit", "credit")
    }
    live: dict[str, dict[str, int]] = {}
    for address in addresses:
        bal = await _call(http, c, "GET", f"/v1/wallets/{address}/balance", admin, chain_id=CHAIN)
        live[address] = {
            "available": ait_to_uait(bal["available"]),
            "held": ait_to_uait(bal["held"]),
        }
    return verify_chain(blocks, chains["coordinator_public_key"], live, chain_id=CHAIN), blocks


async def _in_a_block(
    http: aiohttp.ClientSession, c: Coordinator, key: KeyInfo, transfer_id: str
) -> None:
    async def sealed() -> bool:
        blocks = await _all_blocks(http, c, key)
        return any(e["transfer_id"] == transfer_id for b in blocks for e in b["entries"])

    await _until(sealed, SEAL_DEADLINE_S, f"{transfer_id} in a block")


async def test_faucet_mints_are_sealed_and_the_chain_verifies(
    coordinator: Coordinator, client_key: KeyInfo, admin_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    c = coordinator
    page = await _call(http, c, "GET", f"/v1/chain/{CHAIN}/blocks", client_key)
    assert (page["blocks"], page["height"], page["has_more"]) == ([], None, False)

    earlier: list[Any] = []
    for amount in (100, 2.5, 0.000001):
        minted = await _call(
            http,
            c,
            "POST",
            "/v1/faucet",
            client_key,
            {"address": client_key.address, "amount": amount, "chain_id": CHAIN},
        )
        await _in_a_block(http, c, client_key, minted["transfer_id"])
        # Blocks are only ever appended: what was served before is served unchanged.
        now = await _all_blocks(http, c, admin_key)
        assert now[: len(earlier)] == earlier and len(now) > len(earlier)
        earlier = now

    report, blocks = await _audit(http, c, admin_key)
    assert report.ok, [str(f) for f in report.failures]
    assert report.minted_uait == 102_500_001
    assert report.balances[client_key.address]["available"] == 102_500_001
    assert [b["header"]["height"] for b in blocks] == list(range(len(blocks)))
    # Any authenticated key reads the log; small pages give the same blocks.
    assert await _all_blocks(http, c, client_key, limit=1) == blocks
    one = await _call(http, c, "GET", f"/v1/chain/{CHAIN}/blocks/{len(blocks) - 1}", client_key)
    assert one == blocks[-1]
    # The other chain is independent and empty.
    testnet = await _call(http, c, "GET", "/v1/chain/ait-testnet/blocks", admin_key)
    assert testnet["blocks"] == []


@contextlib.asynccontextmanager
async def _miner(c: Coordinator, api_key: str, tmp: Path) -> AsyncIterator[MinerDaemon]:
    settings = MinerSettings(
        coordinator=c.url,
        api_key=api_key,
        key_file=tmp / "miner.key",
        device="cpu",
        work_dir=tmp / "miner-work",
        shutdown_grace_s=0,
        models=(ECHO,),
    )
    daemon = MinerDaemon(settings)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.connected.wait(), 10)
        yield daemon
    finally:
        daemon.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def test_settled_jobs_are_sealed_with_proofs_and_the_chain_verifies(
    coordinator_factory: CoordinatorFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = await coordinator_factory(fee_bps=500)
    admin = await c.create_key("admin")
    client = await c.create_key("client")
    miner_address = address_of(generate_private_key())
    miner_key = await c.create_key("miner", address=miner_address)
    await _call(http, c, "POST", "/v1/faucet", client, {"address": client.address, "amount": 50})
    chains = await _call(http, c, "GET", "/v1/chains", client)
    coordinator_pub = chains["coordinator_public_key"]

    async with _miner(c, miner_key.api_key, tmp_path) as daemon:
        jobs = [
            (
                await _call(
                    http,
                    c,
                    "POST",
                    "/v1/jobs",
                    client,
                    {"model": "echo", "input": {"n": n, "pad": "x" * 10 * n}},
                    expect=201,
                )
            )["job_id"]
            for n in range(3)
        ]
        # A job no miner serves, cancelled: its escrow is voided back, also in the log.
        stuck = (
            await _call(
                http,
                c,
                "POST",
                "/v1/jobs",
                client,
                {"model": "nobody-serves-this", "input": "x"},
                expect=201,
            )
        )["job_id"]
        await _call(http, c, "DELETE", f"/v1/jobs/{stuck}", client)

        for job_id in jobs:

            async def completed(job_id: str = job_id) -> bool:
                job = await _call(http, c, "GET", f"/v1/jobs/{job_id}", client)
                assert job["status"] in ("queued", "running", "completed"), job
                return bool(job["status"] == "completed")

            await _until(completed, 15, f"{job_id} completed")
            settled_at = time.monotonic()

            async def sealed(job_id: str = job_id) -> Any:
                answer = await _call(http, c, "GET", f"/v1/jobs/{job_id}/receipt", client)
                return answer if answer["block"] is not None else None

            answer = await _until(sealed, SEAL_DEADLINE_S, f"{job_id}'s receipt in a block")
            assert time.monotonic() - settled_at <= SEAL_DEADLINE_S
            ref = answer["block"]
            # The proof ties this exact receipt to a header the coordinator signed.
            assert ref["chain_id"] == CHAIN
            assert ref["entry"]["receipt"] == answer["receipt"]
            assert ref["entry"]["receipt_signature"] == answer["signature"]
            assert ref["entry"]["transfer_id"] == f"pay:{job_id}"
            block = await _call(http, c, "GET", f"/v1/chain/{CHAIN}/blocks/{ref['height']}", client)
            header = block["header"]
            assert verify_proof(ref["entry"], ref["merkle_proof"], header["merkle_root"])
            assert verify_header_signature(header, block["signature"], coordinator_pub) is None
            assert block_hash(header) == ref["block_hash"] == block["hash"]
            tampered = {**ref["entry"], "amount_uait": ref["entry"]["amount_uait"] + 1}
            assert not verify_proof(tampered, ref["merkle_proof"], header["merkle_root"])
        assert sorted(daemon.completed) == sorted(jobs)

    await _in_a_block(http, c, admin, f"void:{stuck}")
    report, blocks = await _audit(http, c, admin)
    assert report.ok, [str(f) for f in report.failures]
    kinds = [e["kind"] for b in blocks for e in b["entries"]]
    assert kinds.count("pay") == 3 and kinds.count("fee") == 3 and kinds.count("void") == 1
    assert report.balances[client.address].get("escrow", 0) == 0
    available, held = await c.balance_uait(miner_address)
    assert report.balances[miner_address]["available"] == available and held == 0


BAD_REQUESTS = [
    ("/v1/chain/nope/blocks", {}, 404, None),
    ("/v1/chain/nope/blocks/0", {}, 404, None),
    ("/v1/chain/ait-devnet/blocks/0", {}, 404, None),  # no block yet
    ("/v1/chain/ait-devnet/blocks/abc", {}, 422, "height"),
    ("/v1/chain/ait-devnet/blocks/-1", {}, 422, "height"),
    ("/v1/chain/ait-devnet/blocks", {"from_height": "x"}, 422, "from_height"),
    ("/v1/chain/ait-devnet/blocks", {"from_height": "-3"}, 422, "from_height"),
    ("/v1/chain/ait-devnet/blocks", {"limit": "0"}, 422, "limit"),
    ("/v1/chain/ait-devnet/blocks", {"limit": "1001"}, 422, "limit"),
    ("/v1/chain/ait-devnet/blocks", {"limit": "9" * 30}, 422, "limit"),
]


async def test_chain_endpoint_errors_are_problems(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    for path, params, expected, field in BAD_REQUESTS:
        async with http.get(coordinator.url + path, headers=client_key.headers, params=params) as r:
            assert r.status == expected, (path, params, await r.text())
            assert r.content_type == "application/problem+json"
            problem = await r.json(content_type=None)
        assert problem["status"] == expected
        if field is not None:
            assert [e["field"] for e in problem["errors"]] == [field], problem


async def test_chain_endpoints_need_a_key_and_past_the_tip_is_empty(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{coordinator.url}/v1/chain/{CHAIN}/blocks") as r:
        assert r.status == 401 and r.content_type == "application/problem+json"
    page = await _call(
        http, coordinator, "GET", f"/v1/chain/{CHAIN}/blocks", client_key, from_height="99"
    )
    assert (page["blocks"], page["has_more"], page["next_from_height"]) == ([], False, None)


async def _chain_gauges(http: aiohttp.ClientSession, c: Coordinator) -> dict[str, float]:
    """The per-chain samples of a /metrics scrape, by `name{labels}`."""
    async with http.get(c.url + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    for name in ("ait_chain_height", "ait_chain_unsealed_transfers"):
        assert f"# TYPE {name} gauge" in text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("ait_chain_height{", "ait_chain_unsealed_transfers{")):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


async def test_metrics_show_each_chains_height_and_unsealed_transfers(
    coordinator: Coordinator, client_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    c = coordinator
    devnet = f'{{chain_id="{CHAIN}"}}'
    testnet = '{chain_id="ait-testnet"}'
    before = await _chain_gauges(http, c)
    assert before == {
        f"ait_chain_height{devnet}": -1,
        f"ait_chain_unsealed_transfers{devnet}": 0,
        f"ait_chain_height{testnet}": -1,
        f"ait_chain_unsealed_transfers{testnet}": 0,
    }
    height = before[f"ait_chain_height{devnet}"]
    for _ in range(2):
        minted = await _call(
            http,
            c,
            "POST",
            "/v1/faucet",
            client_key,
            {"address": client_key.address, "amount": 1, "chain_id": CHAIN},
        )
        await _in_a_block(http, c, client_key, minted["transfer_id"])
        after = await _chain_gauges(http, c)
        tip = (await _all_blocks(http, c, client_key))[-1]["header"]["height"]
        assert after[f"ait_chain_height{devnet}"] == tip > height
        assert after[f"ait_chain_unsealed_transfers{devnet}"] == 0
        # The other chain is untouched.
        assert after[f"ait_chain_height{testnet}"] == -1
        height = tip


async def _blocks_drafted(http: aiohttp.ClientSession, c: Coordinator) -> dict[str, float]:
    """ait_blocks_drafted_total of a /metrics scrape, by where ("event_loop", "helper")."""
    async with http.get(c.url + "/metrics") as r:
        text = await r.text()
    assert "# TYPE ait_blocks_drafted_total counter" in text
    prefix = 'ait_blocks_drafted_total{where="'
    return {
        line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


async def test_a_busy_chain_is_drafted_by_the_seal_helper_and_still_verifies(
    coordinator: Coordinator, admin_key: KeyInfo, http: aiohttp.ClientSession
) -> None:
    """Past HELPER_MIN_ENTRIES transfers in a block, a coordinator on a SQLite file drafts
    its blocks in a helper process; the chain it makes verifies like any other. On
    PostgreSQL the coordinator drafts them itself."""
    c = coordinator
    on_sqlite_file = c.db.sqlite_path is not None
    address = address_of(generate_private_key())
    minted = 0
    deadline = time.monotonic() + 60
    while True:
        # A burst of mints, most of it pending at one round of the sealer.
        for _ in range(HELPER_MIN_ENTRIES * 2):
            await c.fund(address, 1)
            minted += 1
        drafted = await _blocks_drafted(http, c)
        if not on_sqlite_file or drafted.get("helper", 0) > 0:
            break
        assert time.monotonic() < deadline, f"no block drafted by the seal helper: {drafted}"
        await asyncio.sleep(0.5)

    async def all_sealed() -> bool:
        blocks = await _all_blocks(http, c, admin_key)
        return sum(len(b["entries"]) for b in blocks) == minted

    await _until(all_sealed, 30, "every mint in a block")
    drafted = await _blocks_drafted(http, c)
    assert drafted["event_loop"] >= 1
    assert (drafted["helper"] > 0) == on_sqlite_file, drafted
    report, _ = await _audit(http, c, admin_key)
    assert report.ok, [str(f) for f in report.failures]
    assert report.minted_uait == minted * 1_000_000
