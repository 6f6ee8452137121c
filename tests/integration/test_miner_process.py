"""Miner daemons that die, get stopped or lose their network, against a real coordinator.

`miner run` subprocesses are killed with SIGKILL or stopped with SIGTERM; in-process
daemons talk through a TCP proxy that the test cuts. In every case the job completes
exactly once and is paid exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_hub_flow import Stack, StackFactory, stacks, until

from miner.identity import load_identity


@pytest.fixture
async def stack_factory(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    async with stacks(coordinator_factory, tmp_path) as make:
        yield make


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


MINER_TOML = """
coordinator = "{url}"
key_file = "{key_file}"
device = "cpu"
work_dir = "{work_dir}"

[[models]]
name = "echo"
runtime = "echo"
price = 0.000002
"""


def _miner_command() -> list[str]:
    script = Path(sys.executable).parent / "miner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "miner.cli"]


class MinerProcess:
    """`miner run` as a user starts it: config file, API key in the environment."""

    def __init__(self, stack: Stack, api_key: str, name: str, **env: str) -> None:
        tmp = stack.tmp / name
        tmp.mkdir()
        self.key_file = tmp / "miner.key"
        self.miner_id = load_identity(self.key_file).miner_id
        self.config = tmp / "miner.toml"
        self.config.write_text(
            MINER_TOML.format(url=stack.url, key_file=self.key_file, work_dir=tmp / "work")
        )
        self.log = tmp / "miner.log"
        self.env = {**os.environ, "AIT_API_KEY": api_key, **env}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *_miner_command(),
                "run",
                "--config",
                str(self.config),
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, within_s: float = 15) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within_s)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def miner_process(
    stack: Stack, api_key: str, name: str, **env: str
) -> AsyncIterator[MinerProcess]:
    proc = MinerProcess(stack, api_key, name, **env)
    await proc.start()
    try:
        await until(lambda: _registered(stack, proc.miner_id), 30, f"{name} to connect")
        yield proc
    except BaseException:
        print(proc.log.read_text(errors="replace"), file=sys.stderr)
        raise
    finally:
        await proc.stop()


async def _registered(stack: Stack, miner_id: str) -> bool:
    conn = stack.registry.get(miner_id)
    return conn is not None and conn.resumed


async def _micro(stack: Stack, address: str) -> int:
    balance: float = (await stack.balance(address))["balance"]
    return round(balance * 1e6)


async def _running_on(stack: Stack, key: str, job_id: str, miner_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = await stack.job(key, job_id)
        return job if job["status"] == "running" and job["miner_id"] == miner_id else None

    found: dict[str, Any] = await until(check, 10, f"{job_id} running on {miner_id}")
    return found


async def test_sigkill_mid_job_lease_expires_and_another_miner_completes(stack: Stack) -> None:
    key_a, addr_a = await stack.key("miner")
    key_b, addr_b = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    before = await _micro(stack, client_addr)
    async with miner_process(stack, key_a, "a") as a:
        sub = await stack.submit(client_key, params={"delay_ms": 4000})
        await _running_on(stack, client_key, sub["job_id"], a.miner_id)
        a.signal(signal.SIGKILL)
        assert await a.wait() == -signal.SIGKILL
    b = await stack.daemon(key_b, name="b")
    job = await stack.wait_status(client_key, sub["job_id"], "completed", within_s=20)
    assert job["attempts"] == 2 and job["miner_id"] == b.miner_id
    cost = round(job["cost"] * 1e6)
    assert cost > 0
    assert await _micro(stack, addr_a) == 0
    assert await _micro(stack, addr_b) == cost - cost // 10  # 10% fee
    assert await _micro(stack, client_addr) == before - cost  # charged once


async def test_sigterm_gives_the_lease_back_at_once(stack_factory: StackFactory) -> None:
    # A long lease: only an explicit give-back lets another miner start quickly.
    stack = await stack_factory(lease_seconds=30)
    key_a, addr_a = await stack.key("miner")
    key_b, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    async with miner_process(stack, key_a, "a", AIT_SHUTDOWN_GRACE_S="0") as a:
        sub = await stack.submit(client_key, params={"delay_ms": 20_000})
        await _running_on(stack, client_key, sub["job_id"], a.miner_id)
        a.signal(signal.SIGTERM)
        assert await a.wait() == 0
        job = await stack.job(client_key, sub["job_id"])
        assert job["status"] == "queued" and job["attempts"] == 1
    b = await stack.daemon(key_b, name="b")
    job = await _running_on(stack, client_key, sub["job_id"], b.miner_id)
    assert job["attempts"] == 2
    assert await _micro(stack, addr_a) == 0


async def test_sigterm_lets_a_running_job_finish(stack: Stack) -> None:
    key_a, addr_a = await stack.key("miner")
    client_key, _ = await stack.client(100)
    async with miner_process(stack, key_a, "a", AIT_SHUTDOWN_GRACE_S="20") as a:
        sub = await stack.submit(client_key, params={"delay_ms": 1500})
        await _running_on(stack, client_key, sub["job_id"], a.miner_id)
        a.signal(signal.SIGTERM)
        # Draining: a job submitted now is not given to the stopping miner.
        late = await stack.submit(client_key)
        assert await a.wait(20) == 0
        job = await stack.job(client_key, sub["job_id"])
        assert job["status"] == "completed" and job["attempts"] == 1
        assert (await stack.job(client_key, late["job_id"]))["status"] == "queued"
        assert await _micro(stack, addr_a) > 0


# -- network cuts ---------------------------------------------------------------------------
class Proxy:
    """A TCP relay the test can cut: ``cut()`` drops live connections, ``down`` refuses new."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.down = False
        self.port = 0
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()


@contextlib.asynccontextmanager
async def proxy_to(stack: Stack) -> AsyncIterator[tuple[Proxy, str]]:
    proxy = Proxy(int(stack.url.rsplit(":", 1)[1]))
    url = await proxy.start()
    try:
        yield proxy, url
    finally:
        await proxy.close()


async def test_short_cut_resumes_the_same_lease(stack: Stack) -> None:
    key_a, addr_a = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    before = await _micro(stack, client_addr)
    async with proxy_to(stack) as (proxy, url):
        a = await stack.daemon(key_a, name="a", coordinator=url)
        sub = await stack.submit(client_key, params={"delay_ms": 2500})
        await _running_on(stack, client_key, sub["job_id"], a.miner_id)
        await until(lambda: _holds(a, sub["job_id"]), 5, "a to receive the job")
        proxy.cut()
        await until(lambda: _sessions(a, 2), 10, "the miner to reconnect")
        job = await stack.wait_status(client_key, sub["job_id"], "completed", within_s=15)
        # The ack goes through the proxy: wait for it before the proxy closes.
        await until(lambda: _acked(a), 5, "the miner to get its ack")
    assert job["attempts"] == 1 and job["miner_id"] == a.miner_id
    assert a.completed == [sub["job_id"]]
    cost = round(job["cost"] * 1e6)
    assert await _micro(stack, addr_a) == cost - cost // 10
    assert await _micro(stack, client_addr) == before - cost


async def test_result_finished_during_a_cut_is_delivered_once(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(lease_seconds=10)  # outlives the reconnect back-off
    key_a, addr_a = await stack.key("miner")
    client_key, _ = await stack.client(100)
    async with proxy_to(stack) as (proxy, url):
        a = await stack.daemon(key_a, name="a", coordinator=url)
        sub = await stack.submit(client_key, params={"delay_ms": 2000})
        await _running_on(stack, client_key, sub["job_id"], a.miner_id)
        await until(lambda: _holds(a, sub["job_id"]), 5, "a to receive the job")
        proxy.down = True
        proxy.cut()
        await until(lambda: _outbox_holds(a, sub["job_id"]), 5, "result waiting offline")
        assert (await stack.job(client_key, sub["job_id"]))["status"] == "running"
        proxy.down = False
        job = await stack.wait_status(client_key, sub["job_id"], "completed", within_s=15)
        await until(lambda: _acked(a), 5, "the miner to get its ack")  # through the proxy
    assert job["attempts"] == 1 and a.completed == [sub["job_id"]]
    cost = round(job["cost"] * 1e6)
    assert await _micro(stack, addr_a) == cost - cost // 10


async def test_long_cut_loses_the_lease_and_never_completes_twice(stack: Stack) -> None:
    key_a, addr_a = await stack.key("miner")
    key_b, addr_b = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    before = await _micro(stack, client_addr)
    async with proxy_to(stack) as (proxy, url):
        a = await stack.daemon(key_a, name="a", coordinator=url)
        sub = await stack.submit(client_key, params={"delay_ms": 4000})
        await _running_on(stack, client_key, sub["job_id"], a.miner_id)
        await until(lambda: _holds(a, sub["job_id"]), 5, "a to receive the job")
        b = await stack.daemon(key_b, name="b")
        proxy.down = True
        proxy.cut()
        # The lease runs out: the job goes to b; a stops its copy on its own.
        job = await _running_on(stack, client_key, sub["job_id"], b.miner_id)
        assert job["attempts"] == 2
        await until(lambda: _idle(a), 5, "a to stop the job whose lease it lost")
        proxy.down = False
        await until(lambda: _sessions(a, 2), 15, "a to reconnect")
        job = await stack.wait_status(client_key, sub["job_id"], "completed", within_s=15)
    assert job["miner_id"] == b.miner_id and job["attempts"] == 2
    assert a.completed == [] and sub["job_id"] not in a.outbox
    cost = round(job["cost"] * 1e6)
    assert await _micro(stack, addr_a) == 0
    assert await _micro(stack, addr_b) == cost - cost // 10
    assert await _micro(stack, client_addr) == before - cost


async def _sessions(d: Any, n: int) -> bool:
    return bool(d.sessions >= n and d.connected.is_set())


async def _outbox_holds(d: Any, job_id: str) -> bool:
    return job_id in d.outbox


async def _acked(d: Any) -> bool:
    return bool(d.completed)  # the ack travels after the commit the test polled for


async def _holds(d: Any, job_id: str) -> bool:
    return job_id in d.worker.running


async def _idle(d: Any) -> bool:
    return not d.worker.running
