"""Real coordinator (create_app on 127.0.0.1, port 0, SQLite) and real miner daemons:
push, settlement, requirements, priorities, queue reasons, cancel and time-out.

The ``Stack`` harness here is shared by the other test_hub_* and test_miner_* files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chain.ledger import TREASURY_ADDRESS
from chain.receipts import verify_receipt
from coordinator.app import create_app
from coordinator.appkeys import DATABASE, MINER_REGISTRY, SETTINGS
from coordinator.hub.registry import MinerRegistry
from coordinator.service.keys import create_key
from coordinator.settings import RateLimit, Settings
from miner.config import MinerSettings
from miner.daemon import MinerDaemon
from miner.gpu import Device, Probe
from miner.runtime.base import ModelSpec
from protocol.canonical import sha256_hex
from protocol.keys import address_of, generate_private_key

ECHO = ModelSpec("echo", "echo", None, 2, "byte", {})  # 2 micro-AIT per output byte


async def until(check: Callable[[], Awaitable[Any]], within_s: float = 10, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)


@dataclasses.dataclass
class Stack:
    url: str
    settings: Settings
    app: web.Application
    http: aiohttp.ClientSession
    tmp: Path
    admin: str = ""
    daemons: list[tuple[MinerDaemon, asyncio.Task[None]]] = dataclasses.field(default_factory=list)

    @property
    def registry(self) -> MinerRegistry:
        registry = self.app[MINER_REGISTRY]
        assert isinstance(registry, MinerRegistry)
        return registry

    async def key(self, role: str, address: str | None = None) -> tuple[str, str]:
        """(api_key, address) of a new key; a fresh address unless one is given."""
        address = address or address_of(generate_private_key())
        api_key, record, _ = await create_key(self.app[DATABASE], role, address=address)
        return api_key, record.address

    async def call(
        self, method: str, path: str, key: str, body: Any = None, expect: int | None = 200
    ) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as r:
            data = await r.json(content_type=None)
            if expect is not None:
                assert r.status == expect, (r.status, data)
            return data

    async def client(self, ait: int = 100) -> tuple[str, str]:
        key, address = await self.key("client")
        await self.call("POST", "/v1/faucet", key, {"address": address, "amount": ait})
        return key, address

    async def balance(self, address: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("GET", f"/v1/wallets/{address}/balance", self.admin)
        return data

    async def submit(self, key: str, expect: int = 201, **fields: Any) -> Any:
        body = {"model": "echo", "input": {"hello": "world"}, **fields}
        return await self.call("POST", "/v1/jobs", key, body, expect=expect)

    async def job(self, key: str, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("GET", f"/v1/jobs/{job_id}", key)
        return data

    async def wait_status(
        self, key: str, job_id: str, *statuses: str, within_s: float = 15
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(key, job_id)
            return job if job["status"] in statuses else None

        result: dict[str, Any] = await until(check, within_s, f"{job_id} to be {statuses}")
        return result

    async def daemon(
        self,
        api_key: str,
        *,
        name: str = "m",
        models: tuple[ModelSpec, ...] = (ECHO,),
        gpus: tuple[Device, ...] = (),
        max_concurrency: int = 1,
        coordinator: str | None = None,
    ) -> MinerDaemon:
        """An in-process miner daemon, connected and resumed before this returns."""
        settings = MinerSettings(
            coordinator=coordinator or self.url,
            api_key=api_key,
            key_file=self.tmp / f"{name}.key",
            device="cpu",
            max_concurrency=max_concurrency,
            work_dir=self.tmp / f"{name}-work",
            shutdown_grace_s=0,
            models=models,
        )
        # Devices as a GPU host would report them; the runtime itself runs on the CPU.
        probe = Probe(gpus, "cpu") if gpus else None
        d = MinerDaemon(settings, probe=probe)
        task = asyncio.create_task(d.run())
        self.daemons.append((d, task))
        await asyncio.wait_for(d.connected.wait(), 10)
        await until(lambda: self._resumed(d.miner_id), 5, "miner registered")
        return d

    async def _resumed(self, miner_id: str) -> bool:
        conn = self.registry.get(miner_id)
        return conn is not None and conn.resumed

    async def stop_daemon(self, d: MinerDaemon) -> None:
        for daemon, task in self.daemons:
            if daemon is d:
                d.stop()
                await asyncio.wait_for(task, 10)


NO_RATE_LIMITS = MappingProxyType({r: RateLimit(0, 0) for r in ("client", "miner", "admin")})
HUB_SETTINGS: dict[str, Any] = {
    "lease_seconds": 1.5,
    "heartbeat_seconds": 0.3,
    "max_attempts": 3,
    "fee_bps": 1000,
}
StackFactory = Callable[..., Awaitable[Stack]]


@contextlib.asynccontextmanager
async def stacks(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    """``await make(**settings)``: a coordinator from conftest's factory (SQLite and
    PostgreSQL) with short leases, an HTTP session, and daemons stopped at the end."""
    made: list[Stack] = []
    async with aiohttp.ClientSession() as http:

        async def make(**overrides: Any) -> Stack:
            coord = await coordinator_factory(**{**HUB_SETTINGS, **overrides})
            tmp = tmp_path / f"miners{len(made)}"
            tmp.mkdir()
            stack = Stack(coord.url, coord.settings, coord.app, http, tmp)
            stack.admin, _ = await stack.key("admin")
            made.append(stack)
            return stack

        try:
            yield make
        finally:
            for stack in made:
                for d, task in stack.daemons:
                    d.stop()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(task, 10)


# Each test_hub_* / test_miner_* file declares these two fixtures the same way.
@pytest.fixture
async def stack_factory(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    async with stacks(coordinator_factory, tmp_path) as make:
        yield make


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


@contextlib.asynccontextmanager
async def open_stack(tmp: Path, **overrides: Any) -> AsyncIterator[Stack]:
    """A stand-alone stack on a SQLite file under ``tmp`` (no conftest fixtures needed)."""
    values: dict[str, Any] = {
        "data_dir": tmp / "coord",
        "rate_limits": NO_RATE_LIMITS,
        **HUB_SETTINGS,
        **overrides,
    }
    app = create_app(Settings(**values))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        stack = Stack(f"http://127.0.0.1:{port}", app[SETTINGS], app, http, tmp)
        stack.admin, _ = await stack.key("admin")
        try:
            yield stack
        finally:
            for d, task in stack.daemons:
                d.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
            await runner.cleanup()


# --------------------------------------------------------------------------------------
async def test_job_is_pushed_completed_and_settled(
    stack_factory: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dispatcher's safety-net poll is pushed out of reach: only wake-ups dispatch.
    monkeypatch.setattr("coordinator.hub.dispatcher.POLL_S", 60.0)
    stack = await stack_factory()
    miner_key, miner_addr = await stack.key("miner")
    d = await stack.daemon(miner_key)
    client_key, client_addr = await stack.client(100)
    before = await stack.balance(client_addr)

    t0 = time.monotonic()
    sub = await stack.submit(client_key, input={"hello": "world"})
    assert sub["status"] == "queued" and sub["estimated_cost"] > 0
    job = await stack.wait_status(client_key, sub["job_id"], "completed", within_s=10)
    assert time.monotonic() - t0 < 10  # pushed on the wake-up, not found by a 60 s poll
    assert job["miner_id"] == d.miner_id and job["attempts"] == 1 and job["progress"] == 100
    assert job["result"] == {"hello": "world"}

    # Settlement: client charged the cost, miner paid cost less the 10% fee, fee to treasury.
    output = await stack.http.get(
        f"{stack.url}/v1/jobs/{sub['job_id']}/download",
        headers={"Authorization": f"Bearer {client_key}"},
    )
    body = await output.read()
    cost_uait = 2 * len(body)
    assert round(job["cost"] * 1e6) == cost_uait
    after = await stack.balance(client_addr)
    miner = await stack.balance(miner_addr)
    treasury = await stack.balance(TREASURY_ADDRESS)
    fee_uait = cost_uait * 1000 // 10_000
    assert after["held"] == 0
    assert round((before["available"] - after["available"]) * 1e6) == cost_uait
    assert round(miner["available"] * 1e6) == cost_uait - fee_uait
    assert round(treasury["available"] * 1e6) == fee_uait
    total = after["balance"] + miner["balance"] + treasury["balance"]
    assert round(total * 1e6) == round(before["balance"] * 1e6)  # nothing created or lost

    # The receipt verifies offline and is bound to this job, miner, payee and output.
    rec = await stack.call("GET", f"/v1/jobs/{sub['job_id']}/receipt", client_key)
    receipt, signature = rec["receipt"], rec["signature"]
    assert verify_receipt(receipt, signature) == []
    assert receipt["job_id"] == sub["job_id"] and receipt["miner_id"] == d.miner_id
    assert receipt["miner_address"] == miner_addr and receipt["client_address"] == client_addr
    assert receipt["output_sha256"] == sha256_hex(body)
    await until(lambda: _acked(d), 5, "the miner to get its ack")
    assert d.completed == [sub["job_id"]]
    assert not (d.worker.work_dir / sub["job_id"]).exists()  # no scratch dir left behind


async def test_views_and_one_key_for_many_daemons(stack: Stack) -> None:
    miner_key, miner_addr = await stack.key("miner")
    a100 = (Device(0, "NVIDIA A100-SXM4-80GB", "a100-80gb", 80, 0),)
    d1 = await stack.daemon(miner_key, name="host1", gpus=a100)
    d2 = await stack.daemon(miner_key, name="host2")
    assert d1.miner_id != d2.miner_id
    assert d1.welcome is not None and d2.welcome is not None
    assert d1.welcome.address == d2.welcome.address == miner_addr
    miners = (await stack.call("GET", "/v1/miners", stack.admin))["miners"]
    by_id = {m["miner_id"]: m for m in miners}
    assert set(by_id) == {d1.miner_id, d2.miner_id}
    assert by_id[d1.miner_id]["gpus"][0]["type"] == "a100-80gb"
    assert by_id[d2.miner_id]["gpus"][0]["type"] == "cpu"
    assert by_id[d1.miner_id]["models"][0]["name"] == "echo"
    models = (await stack.call("GET", "/v1/models", stack.admin))["models"]
    echo = next(m for m in models if m["model"] == "echo")
    assert echo["miners_online"] == 2 and echo["free_slots"] == 2
    # Pages by miner id, of the miners serving a model when asked.
    first = min(by_id)
    page = await stack.call("GET", "/v1/miners?limit=1", stack.admin)
    assert [m["miner_id"] for m in page["miners"]] == [first]
    page = await stack.call("GET", "/v1/miners?model=echo&offset=1", stack.admin)
    assert [m["miner_id"] for m in page["miners"]] == [max(by_id)]
    page = await stack.call("GET", "/v1/miners?model=nobody", stack.admin)
    assert page == {"miners": []}
    bad = await stack.call("GET", "/v1/miners?limit=0&colour=red", stack.admin, expect=422)
    assert {e["field"] for e in bad["errors"]} == {"limit", "colour"}
    async with stack.http.get(stack.url + "/metrics") as response:
        assert "\nait_miners_connected 2\n" in await response.text()


async def test_requirements_and_queue_reasons(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    a100 = (Device(0, "NVIDIA A100-SXM4-80GB", "a100-80gb", 80, 0),)
    big = await stack.daemon(miner_key, name="big", gpus=a100)
    small = await stack.daemon(
        miner_key, name="small", gpus=(Device(0, "Tesla V100-SXM2-16GB", "v100", 16, 0),)
    )
    # Jobs go only to a miner that meets every requirement.
    for _ in range(2):
        sub = await stack.submit(client_key, requirements={"gpu_type": "a100", "min_vram_gb": 40})
        job = await stack.wait_status(client_key, sub["job_id"], "completed")
        assert job["miner_id"] == big.miner_id
    sub = await stack.submit(client_key, requirements={"gpu_type": "V100"})
    assert (await stack.wait_status(client_key, sub["job_id"], "completed"))["miner_id"] == (
        small.miner_id
    )
    # Each unmet cause has its sentence.
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "gpt2"}, "no connected miner serves model gpt2"),
        (
            {"requirements": {"min_vram_gb": 200}},
            "2 miners serve echo but none has ≥ 200 GiB VRAM",
        ),
        ({"requirements": {"gpu_type": "h100"}}, "2 miners serve echo but none has gpu_type h100"),
        ({"requirements": {"gpu_count": 4}}, "2 miners serve echo but none has 4 GPUs"),
        ({"max_price": 0.000001}, "above max_price 0.000001"),
    ]
    for fields, reason in cases:
        sub = await stack.submit(client_key, **fields)
        await asyncio.sleep(0.2)
        job = await stack.job(client_key, sub["job_id"])
        assert job["status"] == "queued", job
        assert reason in job["queue_reason"], (reason, job["queue_reason"])
    # Busy: both miners hold a long job.
    long = [
        await stack.submit(client_key, params={"delay_ms": 20_000}),
        await stack.submit(client_key, params={"delay_ms": 20_000}),
    ]
    for sub in long:
        await stack.wait_status(client_key, sub["job_id"], "running")
    sub = await stack.submit(client_key)
    await asyncio.sleep(0.2)
    job = await stack.job(client_key, sub["job_id"])
    assert job["queue_reason"] == "all 2 matching miners are busy"
    # fail_if_unmatched refuses what no miner could ever run.
    bad = await stack.submit(client_key, expect=422, model="llama", fail_if_unmatched=True)
    assert "no connected miner serves model llama" in bad["detail"]


async def test_high_before_normal_before_low_fifo_within(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    await stack.daemon(miner_key)
    blocker = await stack.submit(client_key, params={"delay_ms": 4000})  # outlasts the submits
    await stack.wait_status(client_key, blocker["job_id"], "running")
    order = ["low", "normal", "high", "normal", "high", "low"]
    ids = [(await stack.submit(client_key, priority=p))["job_id"] for p in order]
    jobs = [await stack.wait_status(client_key, j, "completed", within_s=20) for j in ids]
    started = sorted(zip([j["started_at"] for j in jobs], order, ids, strict=True))
    assert [(p, i) for _, p, i in started] == [
        ("high", ids[2]),
        ("high", ids[4]),
        ("normal", ids[1]),
        ("normal", ids[3]),
        ("low", ids[0]),
        ("low", ids[5]),
    ]


async def test_cancel_reaches_the_running_miner_and_escrow_comes_back(stack: Stack) -> None:
    miner_key, miner_addr = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    d = await stack.daemon(miner_key)
    before = await stack.balance(client_addr)
    sub = await stack.submit(client_key, params={"delay_ms": 30_000})
    await stack.wait_status(client_key, sub["job_id"], "running")
    await until(lambda: _holds(d, sub["job_id"]), 5, "miner running the job")
    job = await stack.call("DELETE", f"/v1/jobs/{sub['job_id']}", client_key)
    assert job["status"] == "cancelled"
    await until(lambda: _idle(d), 5, "miner to stop the job")
    after = await stack.balance(client_addr)
    assert after["available"] == before["available"] and after["held"] == 0
    assert (await stack.balance(miner_addr))["balance"] == 0
    await stack.call("DELETE", f"/v1/jobs/{sub['job_id']}", client_key, expect=409)
    # The miner is free again: the next job runs.
    nxt = await stack.submit(client_key)
    await stack.wait_status(client_key, nxt["job_id"], "completed")


async def test_timeout_ends_timed_out_and_stops_the_miner(stack: Stack) -> None:
    miner_key, miner_addr = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    d = await stack.daemon(miner_key)
    before = await stack.balance(client_addr)
    sub = await stack.submit(client_key, timeout_seconds=1, params={"delay_ms": 30_000})
    await until(lambda: _holds(d, sub["job_id"]), 5, "miner running the job")
    job = await stack.wait_status(client_key, sub["job_id"], "timed_out", within_s=5)
    assert "timed out" in job["error"]
    await until(lambda: _idle(d), 5, "miner to stop the job")
    after = await stack.balance(client_addr)
    assert after["available"] == before["available"] and after["held"] == 0
    assert (await stack.balance(miner_addr))["balance"] == 0


async def test_miner_reported_failure(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    await stack.daemon(miner_key)
    before = await stack.balance(client_addr)
    sub = await stack.submit(client_key, params={"fail": "bad input on purpose"})
    job = await stack.wait_status(client_key, sub["job_id"], "failed")
    assert job["error"] == "bad input on purpose" and job["attempts"] == 1
    assert (await stack.balance(client_addr))["available"] == before["available"]


async def test_file_input_round_trips(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    await stack.daemon(miner_key)
    form = aiohttp.FormData()
    data = bytes(range(256)) * 4
    form.add_field("file", data, filename="blob.bin", content_type="application/octet-stream")
    async with stack.http.post(
        f"{stack.url}/v1/files", data=form, headers={"Authorization": f"Bearer {client_key}"}
    ) as r:
        assert r.status in (200, 201), await r.text()
        file_id = (await r.json())["file_id"]
    sub = await stack.submit(client_key, input=file_id)
    await stack.wait_status(client_key, sub["job_id"], "completed")
    async with stack.http.get(
        f"{stack.url}/v1/jobs/{sub['job_id']}/download",
        headers={"Authorization": f"Bearer {client_key}"},
    ) as r:
        assert await r.read() == data
    rec = await stack.call("GET", f"/v1/jobs/{sub['job_id']}/receipt", client_key)
    assert rec["receipt"]["input_sha256"] == sha256_hex(data)


async def _holds(d: MinerDaemon, job_id: str) -> bool:
    return job_id in d.worker.running


async def _acked(d: MinerDaemon) -> bool:
    return bool(d.completed)  # the ack travels after the commit the test polled for


async def _idle(d: MinerDaemon) -> bool:
    return not d.worker.running


async def test_known_miners_survive_a_coordinator_restart(stack_factory: StackFactory) -> None:
    first = await stack_factory()
    miner_key, _ = await first.key("miner")
    d = await first.daemon(miner_key)
    client_key, _ = await first.client(100)
    done = await first.submit(client_key)
    await first.wait_status(client_key, done["job_id"], "completed")
    await first.stop_daemon(d)
    again = await stack_factory()  # a new coordinator process state on the same database
    assert again.registry.track(d.miner_id).completed == 1
    client_key, _ = await again.client(100)
    # Its price is known, so the escrow is sized and the job is accepted as matchable.
    sub = await again.submit(client_key, fail_if_unmatched=True)
    assert sub["estimated_cost"] > 0
    job = await again.job(client_key, sub["job_id"])
    assert job["queue_reason"] == "no miner is connected; waiting for one that serves model echo"
    await again.submit(client_key, expect=422, model="gpt2", fail_if_unmatched=True)


async def test_progress_reaches_the_job_while_it_runs(stack: Stack) -> None:
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    await stack.daemon(miner_key)
    sub = await stack.submit(client_key, params={"delay_ms": 2000})

    async def moving() -> dict[str, Any] | None:
        job = await stack.job(client_key, sub["job_id"])
        return job if job["status"] == "running" and 0 < job["progress"] < 100 else None

    job = await until(moving, 10, "progress while running")
    assert job["progress_message"] == "echoing"
    done = await stack.wait_status(client_key, sub["job_id"], "completed")
    assert done["progress"] == 100
