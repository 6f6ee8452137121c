"""The SDK (async `CoordinatorClient` and sync `Client`) against a real coordinator on
127.0.0.1 (tests/conftest.py, over SQLite and PostgreSQL) and a real in-process miner
daemon serving the echo runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]  # a dependency of openapi-spec-validator
import pytest
from ait_harness import Coordinator, CoordinatorFactory

from client import errors
from client.sdk import CoordinatorClient
from client.sync import Client
from coordinator.openapi import build_openapi
from coordinator.settings import RateLimit
from miner.config import MinerSettings
from miner.daemon import MinerDaemon
from miner.runtime.base import ModelSpec


@dataclass
class Stack:
    url: str
    key: str  # a client key with 100 AIT on ait-devnet
    other_key: str  # another client (another address), no money
    admin_key: str

    def client(self, key: str | None = None, **kwargs: Any) -> CoordinatorClient:
        return CoordinatorClient(self.url, key or self.key, **kwargs)


async def _stack(coordinator: Coordinator, tmp_path: Path) -> AsyncIterator[Stack]:
    client = await coordinator.create_key("client")
    other = await coordinator.create_key("client")
    admin = await coordinator.create_key("admin")
    miner = await coordinator.create_key("miner")
    daemon = MinerDaemon(
        MinerSettings(
            coordinator=coordinator.url,
            api_key=miner.api_key,
            key_file=tmp_path / "miner.key",
            device="cpu",
            work_dir=tmp_path / "work",
            shutdown_grace_s=0,
            models=(ModelSpec("echo", "echo", None, 1, "byte"),),
        )
    )
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.connected.wait(), 10)
        stack = Stack(coordinator.url, client.api_key, other.api_key, admin.api_key)
        async with stack.client() as sdk:
            await sdk.faucet(100)
        yield stack
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)


def _partial_files(folder: Path) -> list[Path]:
    return list(folder.glob("*.part"))


@pytest.fixture
async def stack(coordinator_factory: CoordinatorFactory, tmp_path: Path) -> AsyncIterator[Stack]:
    coordinator = await coordinator_factory(block_interval_seconds=0.2)
    async for value in _stack(coordinator, tmp_path):
        yield value


async def test_submit_wait_follows_events_to_the_result(stack: Stack) -> None:
    seen: list[dict[str, Any]] = []
    async with stack.client() as client:
        accepted = await client.submit("echo", {"a": 1}, params={"delay_ms": 400}, name="n1")
        job = await client.wait(accepted["job_id"], on_event=seen.append, timeout_s=30)
        assert job["status"] == "completed" and job["result"] is not None
        assert job["name"] == "n1" and job["cost"] == len(b'{"a":1}') / 1_000_000
        statuses = [e.get("status") for e in seen]
        assert "running" in statuses or any(e.get("type") == "progress" for e in seen)
        events = [e async for e in client.events(job["job_id"])]
        assert events[0]["type"] == "status" and events[0]["status"] == "completed"
        assert events[-1]["type"] == "end"
        receipt = await client.receipt(job["job_id"])
        assert receipt["receipt"]["job_id"] == job["job_id"]
        assert receipt["signature"]["alg"] == "Ed25519"


async def test_submit_batch_followed_on_the_stream_of_all_jobs(stack: Stack) -> None:
    async with stack.client() as client:
        ended: dict[str, dict[str, Any]] = {}
        seen: list[dict[str, Any]] = []

        async def follow() -> None:  # the ends only: no queued or running views, no progress
            async for event in client.all_events(idle_timeout=30, statuses=("completed", "failed")):
                seen.append(event)
                if event["type"] == "status" and event["status"] == "completed":
                    ended[event["job_id"]] = event
                    if len(ended) == 3:
                        return

        follower = asyncio.create_task(follow())
        for _ in range(200):  # bounded: until the coordinator counts the stream
            if "ait_sse_streams 1" in await _metrics(stack.url):
                break
            await asyncio.sleep(0.02)
        jobs = [{"model": "echo", "input": {"n": n}} for n in range(3)]
        accepted = await client.submit_batch(jobs)
        await asyncio.wait_for(follower, 30)
        assert [ended[a["job_id"]]["result"] for a in accepted] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert len(seen) == 3
        with pytest.raises(errors.ApiError) as refused:  # all or none: an empty batch is 422
            await client.submit_batch([])
        assert refused.value.status == 422


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        return await response.text()


async def test_upload_file_submit_by_file_id_and_download(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00\x01binary\xff" * 100)
    async with stack.client() as client:
        uploaded = await client.upload_file(source)
        assert uploaded["bytes"] == 900 and uploaded["file_id"].startswith("file_")
        accepted = await client.submit("echo", uploaded["file_id"])
        job = await client.wait(accepted["job_id"], timeout_s=30)
        assert job["status"] == "completed"
        path = await client.download(job["job_id"], tmp_path)
        assert path.parent == tmp_path and path.read_bytes() == source.read_bytes()
        assert not _partial_files(tmp_path)
        multipart = await client.submit("echo", input_file=source)
        assert (await client.wait(multipart["job_id"], timeout_s=30))["status"] == "completed"


async def test_jobs_views_rename_and_history(stack: Stack) -> None:
    async with stack.client() as client:
        first = await client.submit("echo", "one")
        second = await client.submit("no-such-model", "two")
        assert (await client.latest())["job_id"] == second["job_id"]
        page = await client.list_jobs(limit=1)
        assert page["total"] == 2 and page["has_more"] is True
        assert [j["job_id"] for j in page["jobs"]] == [second["job_id"]]
        renamed = await client.rename(second["job_id"], "label")
        assert renamed["name"] == "label"
        queued = await client.get_job(second["job_id"])
        assert queued["status"] == "queued" and queued["queue_reason"]
        with pytest.raises(errors.WaitTimedOut):
            await client.wait(second["job_id"], timeout_s=0.5)
        # Ending the job also ends the server's side of the stream the wait left behind.
        assert (await client.cancel(second["job_id"]))["status"] == "cancelled"
        await client.wait(first["job_id"], timeout_s=30)
        report = await client.history("2000-01-01", "2999-12-31")
        assert report["count"] == 2 and len(report["jobs"]) == 2
        assert {j["status"] for j in report["jobs"]} == {"completed", "cancelled"}


async def test_problem_answers_raise_typed_errors(stack: Stack) -> None:
    async with stack.client() as client:
        job_id = (await client.submit("no-such-model", "x"))["job_id"]
        me = await client.me()
        async with stack.client(stack.other_key) as other:
            with pytest.raises(errors.NotFound):
                await other.get_job(job_id)  # another client's job is 404, not 403
            with pytest.raises(errors.InsufficientFunds):
                await other.submit("echo", "x" * 50)
            with pytest.raises(errors.Forbidden):
                await other.balance(me["address"])
        await client.cancel(job_id)
        with pytest.raises(errors.Conflict):
            await client.cancel(job_id)
        with pytest.raises(errors.ValidationFailed) as invalid:
            await client.list_jobs(limit=1000)
        assert [e["field"] for e in invalid.value.errors] == ["limit"]
        with pytest.raises(errors.FaucetDisabled):
            await client.faucet(1, chain_id="ait-testnet")
        with pytest.raises(errors.Conflict):
            await client.download(job_id, "/nonexistent-dir/x")
    async with stack.client("ait_unknown") as stranger:
        with pytest.raises(errors.Unauthorized):
            await stranger.me()
    async with stack.client(stack.admin_key) as admin:
        assert (await admin.balance(me["address"]))["available"] == 100


async def test_wallet_chain_market_and_operations(stack: Stack) -> None:
    async with stack.client() as client:
        balance = await client.balance()
        assert {"address", "chain_id", "balance", "held", "available"} <= balance.keys()
        history = await client.wallet_history()
        assert history["entries"][0]["amount"] == 100
        chains = await client.chains()
        assert {c["chain_id"] for c in chains["chains"]} == {"ait-devnet", "ait-testnet"}
        blocks: list[dict[str, Any]] = []
        for _ in range(50):
            blocks = [b async for b in client.all_blocks("ait-devnet", page=1)]
            if blocks:
                break
            await asyncio.sleep(0.1)
        assert blocks and blocks[0]["header"]["height"] == 0
        assert await client.block("ait-devnet", 0) == blocks[0]
        assert (await client.miners())["miners"][0]["models"][0]["name"] == "echo"
        assert (await client.miners("echo", limit=1, offset=0))["miners"][0]["status"]
        assert (await client.miners("gpt2"))["miners"] == []
        assert (await client.models())["models"][0]["model"] == "echo"
        assert (await client.health())["status"] == "ok"
        assert await client.openapi() == build_openapi()


async def test_sync_client_round_trip(stack: Stack, tmp_path: Path) -> None:
    def script() -> tuple[dict[str, Any], list[dict[str, Any]], bytes]:
        with Client(stack.url, stack.key) as ait:
            job = ait.wait(ait.submit("echo", [1, 2, 3])["job_id"], timeout_s=30)
            events = list(ait.events(job["job_id"]))
            for first in ait.events(job["job_id"]):
                assert first["type"] == "status"
                break  # leaving early closes the stream; the client stays usable
            output = ait.download(job["job_id"], tmp_path / "out.json").read_bytes()
            assert ait.balance()["held"] == 0
            slow = {"model": "echo", "input": [4], "params": {"delay_ms": 1500}}
            [accepted] = ait.submit_batch([slow])
            for event in ait.all_events(idle_timeout=30):  # its end comes after subscribing
                if event.get("job_id") == accepted["job_id"] and event.get("status") == "completed":
                    break  # leaving the endless stream early closes it
            return job, events, output

    job, events, output = await asyncio.to_thread(script)
    assert job["status"] == "completed"
    assert events[-1]["type"] == "end"
    assert output == b"[1,2,3]"


@pytest.fixture
async def limited(coordinator_factory: CoordinatorFactory, tmp_path: Path) -> AsyncIterator[Stack]:
    limits = {"client": RateLimit(3, 0), "miner": RateLimit(0, 0), "admin": RateLimit(0, 0)}
    coordinator = await coordinator_factory(rate_limits=limits)
    async for value in _stack(coordinator, tmp_path):
        yield value


async def test_rate_limit_is_rate_limited_with_retry_after(limited: Stack) -> None:
    async with limited.client(limited.other_key, max_retries=0) as client:
        for _ in range(3):
            await client.me()
        with pytest.raises(errors.RateLimited) as info:
            await client.me()
    assert info.value.status == 429
    assert info.value.retry_after is not None and info.value.retry_after >= 1


def _conforms(document: Any, schema_name: str) -> None:
    """`document` is valid against the OpenAPI document's component schema."""
    openapi = build_openapi()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": openapi["components"]}
    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)


async def test_answers_conform_to_the_openapi_schemas(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("data")
    async with stack.client() as client:
        accepted = await client.submit("echo", "conform", requirements={"gpu_type": "cpu"})
        _conforms(accepted, "JobAccepted")
        job = await client.wait(accepted["job_id"], timeout_s=30)
        queued = await client.submit("no-such-model", "x")
        for name, document in [
            ("Job", job),
            ("Job", await client.get_job(queued["job_id"])),
            ("Job", await client.rename(queued["job_id"], "r")),
            ("Job", await client.cancel(queued["job_id"])),
            ("Job", await client.latest()),
            ("JobList", await client.list_jobs()),
            ("JobHistory", await client.history()),
            ("Receipt", await client.receipt(job["job_id"])),
            ("FileUploaded", await client.upload_file(source)),
            ("Me", await client.me()),
            ("Balance", await client.balance()),
            ("WalletHistory", await client.wallet_history()),
            ("FaucetResult", await client.faucet(1)),
            ("Chains", await client.chains()),
            ("Blocks", await client.blocks("ait-devnet")),
            ("Miners", await client.miners()),
            ("Models", await client.models()),
            ("Health", await client.health()),
        ]:
            _conforms(document, name)
        with pytest.raises(errors.ValidationFailed) as invalid:
            await client.list_jobs(limit=0)
        _conforms(invalid.value.problem, "Problem")
