"""Escrow top-ups against a real coordinator (SQLite and PostgreSQL) and real miner daemons:
a job accepted with an estimate below the price of the miner that takes it (no miner known
at submit, or a dearer one than the one priced) is topped up at the claim and the miner is
paid its price; a client who cannot fund the top-up waits queued, with a reason, until it
can. The ledger still sums to what was minted and the block log verifies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_hub_flow import Stack, StackFactory, stacks, until

from chain.ledger import TREASURY_ADDRESS
from chain.verify import verify_chain
from miner.runtime.base import ModelSpec

PRICE = 1_000  # uAIT per output byte
DEAR = ModelSpec("echo", "echo", None, PRICE, "byte", {})
CHEAP = ModelSpec("echo", "echo", None, 100, "byte", {})
INPUT = {"hello": "world"}  # 17 bytes as JSON: estimated and metered as 17 bytes
COST = 17 * PRICE
FEE = COST * 1000 // 10_000  # HUB_SETTINGS: fee_bps 1000


@pytest.fixture
async def stack_factory(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    async with stacks(coordinator_factory, tmp_path) as make:
        yield make


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


async def _uait(stack: Stack, address: str) -> tuple[int, int]:
    """(available, held) in micro-AIT."""
    bal = await stack.balance(address)
    return int(bal["available_uait"]), int(bal["held_uait"])


async def _audit(stack: Stack, job_id: str) -> Any:
    """Once the job's payment is sealed: verify_chain over the whole log against the live
    balance of every address in it."""
    chain = stack.settings.default_chain

    async def blocks() -> list[Any]:
        found: list[Any] = []
        while True:
            page = await stack.call(
                "GET", f"/v1/chain/{chain}/blocks?from_height={len(found)}", stack.admin
            )
            found.extend(page["blocks"])
            if not page["has_more"]:
                return found

    async def sealed() -> list[Any] | None:
        found = await blocks()
        ids = {e["transfer_id"] for b in found for e in b["entries"]}
        return found if f"pay:{job_id}" in ids else None

    log = await until(sealed, 15, f"pay:{job_id} in a block")
    addresses = {
        e[side]["address"] for b in log for e in b["entries"] for side in ("debit", "credit")
    }
    live = {}
    for address in addresses:
        available, held = await _uait(stack, address)
        live[address] = {"available": available, "held": held}
    chains = await stack.call("GET", "/v1/chains", stack.admin)
    return verify_chain(log, chains["coordinator_public_key"], live, chain_id=chain), log


async def test_job_accepted_at_zero_is_topped_up_and_the_miner_paid_its_price(
    stack: Stack,
) -> None:
    client_key, client = await stack.client(100)
    sub = await stack.submit(client_key, input=INPUT)  # no miner known, no max_price
    assert sub["estimated_cost"] == 0
    assert await _uait(stack, client) == (100_000_000, 0)

    miner_key, miner = await stack.key("miner")
    await stack.daemon(miner_key, models=(DEAR,))
    job = await stack.wait_status(client_key, sub["job_id"], "completed")
    assert job["estimated_cost"] == job["cost"] == COST / 1e6  # what was held, then charged
    assert await _uait(stack, client) == (100_000_000 - COST, 0)
    assert await _uait(stack, miner) == (COST - FEE, 0)
    assert await _uait(stack, TREASURY_ADDRESS) == (FEE, 0)

    history = await stack.call("GET", f"/v1/wallets/{client}/history", client_key)
    holds = sorted((e["transfer_id"], e["amount_uait"]) for e in history["entries"])
    job_id = sub["job_id"]
    assert [h for h in holds if h[0].startswith("hold:")] == [
        (f"hold:{job_id}", 0),
        (f"hold:{job_id}:1", COST),  # the top-up of its first claim
    ]
    report, log = await _audit(stack, job_id)
    assert report.ok, report.failures
    assert report.minted_uait == 100_000_000
    balances = report.balances
    assert sum(v for kinds in balances.values() for k, v in kinds.items() if k != "issuance") == (
        report.minted_uait
    )
    entries = {e["transfer_id"]: e for b in log for e in b["entries"]}
    assert entries[f"hold:{job_id}:1"]["job_id"] == job_id


async def test_a_client_who_cannot_fund_the_miner_waits_queued_until_funded(
    stack: Stack,
) -> None:
    client_key, client = await stack.key("client")
    await stack.call("POST", "/v1/faucet", client_key, {"address": client, "amount": 0.01})
    sub = await stack.submit(client_key, input=INPUT)
    assert sub["estimated_cost"] == 0
    miner_key, miner = await stack.key("miner")
    d = await stack.daemon(miner_key, models=(DEAR,))

    async def explained() -> dict[str, Any] | None:
        job = await stack.job(client_key, sub["job_id"])
        return job if "available balance" in (job.get("queue_reason") or "") else None

    job = await until(explained, 10, "a queue reason naming the balance")
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["queue_reason"] == (
        "1 miner serves echo but the cheapest would cost about 0.017000 AIT for this job, "
        "more than its escrow (0.000000 AIT) plus the client's available balance "
        "(0.010000 AIT); it waits for funds or a cheaper miner until its timeout"
    )
    await asyncio.sleep(0.5)  # several dispatcher rounds: still not leased, nothing held
    assert (await stack.job(client_key, sub["job_id"]))["attempts"] == 0
    assert await _uait(stack, client) == (10_000, 0)
    assert d.completed == []

    # The client adds funds: the next dispatcher round tops the escrow up and runs it.
    await stack.call("POST", "/v1/faucet", client_key, {"address": client, "amount": 0.01})
    job = await stack.wait_status(client_key, sub["job_id"], "completed")
    assert job["cost"] == COST / 1e6 and job["attempts"] == 1
    assert await _uait(stack, client) == (20_000 - COST, 0)
    assert await _uait(stack, miner) == (COST - FEE, 0)
    report, _ = await _audit(stack, sub["job_id"])
    assert report.ok, report.failures


async def test_a_dearer_miner_than_the_estimate_is_covered_up_to_max_price(
    stack: Stack,
) -> None:
    client_key, client = await stack.client(100)
    miner_key, miner = await stack.key("miner")
    cheap = await stack.daemon(miner_key, name="cheap", models=(CHEAP,))
    await stack.stop_daemon(cheap)  # its price is remembered: the estimate uses it
    sub = await stack.submit(client_key, input=INPUT, max_price=0.05)
    assert sub["estimated_cost"] == 17 * 100 / 1e6
    await stack.daemon(miner_key, name="dear", models=(DEAR,))
    job = await stack.wait_status(client_key, sub["job_id"], "completed")
    assert job["estimated_cost"] == job["cost"] == COST / 1e6  # above the estimate, <= 0.05
    assert await _uait(stack, client) == (100_000_000 - COST, 0)
    assert await _uait(stack, miner) == (COST - FEE, 0)
    # Priced above max_price it would not be given the job at all, whatever the balance.
    over = await stack.submit(client_key, input=INPUT, max_price=0.01)
    await asyncio.sleep(0.3)
    queued = await stack.job(client_key, over["job_id"])
    assert queued["status"] == "queued" and "above max_price 0.010000" in queued["queue_reason"]
    assert queued["estimated_cost"] == 17 * 100 / 1e6  # the cheap miner's price still fits


async def test_cancelling_a_topped_up_job_returns_the_whole_escrow(stack: Stack) -> None:
    client_key, client = await stack.client(100)
    sub = await stack.submit(client_key, input=INPUT, params={"delay_ms": 30_000})
    miner_key, miner = await stack.key("miner")
    await stack.daemon(miner_key, models=(DEAR,))
    job = await stack.wait_status(client_key, sub["job_id"], "running")
    assert job["estimated_cost"] == COST / 1e6
    assert await _uait(stack, client) == (100_000_000 - COST, COST)
    cancelled = await stack.call("DELETE", f"/v1/jobs/{sub['job_id']}", client_key)
    assert cancelled["status"] == "cancelled"
    assert await _uait(stack, client) == (100_000_000, 0)  # the hold and its top-up
    assert await _uait(stack, miner) == (0, 0)
