"""Hostile miners with real keys against a real coordinator while an honest daemon works
(SPEC §4, docs/protocol.md). tests/integration/test_hub_faults.py already covers forged,
empty and foreign-key signatures, output changed after signing, another job's id,
unbound inputs and replays of a settled result; this file covers what it does not:
frames about jobs leased to someone else or to nobody, impersonating another miner's
key in the handshake, malformed, binary and oversized frames, and a frame flood. Every
case ends with the honest daemon still served and the hostile addresses never paid.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hostile_miner import HostileMiner, advert, ws_url
from reliability_cluster import record
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from coordinator.appkeys import MINER_REGISTRY
from miner.config import MinerSettings
from miner.daemon import MinerDaemon
from miner.runtime.base import ModelSpec
from protocol.keys import generate_private_key, sign_hex
from protocol.limits import MAX_MESSAGE_BYTES
from protocol.messages import (
    Cancel,
    Challenge,
    Error,
    Failed,
    Heartbeat,
    Hello,
    Progress,
    Reject,
    Release,
    auth_payload,
    decode,
    encode,
)

pytestmark = pytest.mark.timeout(180)

HONEST_ECHO = ModelSpec("echo", "echo", None, 2, "byte", {})  # cheaper than the hostile


class Market:
    """A coordinator, an honest in-process daemon, a funded client and API helpers."""

    def __init__(self, coordinator: Any, http: aiohttp.ClientSession, tmp: Path) -> None:
        self.coordinator, self.http, self.tmp = coordinator, http, tmp
        self.url: str = coordinator.url
        self.daemon: MinerDaemon | None = None
        self.task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        self.admin = await self.coordinator.create_key("admin")
        self.client = await self.coordinator.create_key("client")
        await self.coordinator.fund(self.client.address, 100)
        self.honest_key = await self.coordinator.create_key("miner")
        self.hostile_key = await self.coordinator.create_key("miner")
        settings = MinerSettings(
            coordinator=self.url,
            api_key=self.honest_key.api_key,
            key_file=self.tmp / "honest.key",
            device="cpu",
            max_concurrency=2,
            work_dir=self.tmp / "honest-work",
            shutdown_grace_s=0,
            models=(HONEST_ECHO,),
        )
        self.daemon = MinerDaemon(settings)
        self.task = asyncio.create_task(self.daemon.run())
        await asyncio.wait_for(self.daemon.connected.wait(), 15)

    async def close(self) -> None:
        if self.daemon is not None and self.task is not None:
            self.daemon.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 15)

    async def call(self, method: str, path: str, key: Any, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=body, headers=key.headers) as r:
            return r.status, await r.json(content_type=None)

    async def submit(self, **fields: Any) -> dict[str, Any]:
        status, data = await self.call(
            "POST", "/v1/jobs", self.client, {"model": "echo", "input": "hi", **fields}
        )
        assert status == 201, data
        job: dict[str, Any] = data
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        status, data = await self.call("GET", f"/v1/jobs/{job_id}", self.client)
        assert status == 200, data
        job: dict[str, Any] = data
        return job

    async def wait(self, job_id: str, *statuses: str, within_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + within_s
        while True:
            job = await self.job(job_id)
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"{job_id} not {statuses} in time: {job}"
            await asyncio.sleep(0.05)

    async def paid_uait(self, address: str) -> int:
        status, data = await self.call("GET", f"/v1/wallets/{address}/balance", self.admin)
        assert status == 200, data
        return int(data["balance_uait"])

    async def healthy(self) -> bool:
        async with self.http.get(self.url + "/healthz") as r:
            return r.status == 200

    async def honest_still_serves(self) -> dict[str, Any]:
        """A fresh job completes on the honest daemon and pays its address."""
        sub = await self.submit(input={"after": "attack"})
        job = await self.wait(sub["job_id"], "completed")
        assert self.daemon is not None and job["miner_id"] == self.daemon.identity.miner_id
        return job


@pytest.fixture
async def market(
    coordinator_factory: Callable[..., Awaitable[Any]], http: aiohttp.ClientSession, tmp_path: Path
) -> AsyncIterator[Market]:
    coordinator = await coordinator_factory(lease_seconds=3, heartbeat_seconds=0.5)
    m = Market(coordinator, http, tmp_path)
    try:
        await m.setup()
        yield m
    finally:
        await m.close()


async def test_frames_about_jobs_it_does_not_hold_change_nothing(market: Market) -> None:
    hostile = await HostileMiner.connect(market.url, market.hostile_key.api_key)
    running = await market.submit(params={"delay_ms": 2500})
    job = await market.wait(running["job_id"], "running")
    assert market.daemon is not None and job["miner_id"] == market.daemon.identity.miner_id
    ghost = await market.submit(model="ghost-model-nobody-serves")
    ghost_job = await market.job(ghost["job_id"])
    missing = dict(ghost_job, job_id="job_" + secrets.token_hex(10))

    rejects: list[str] = []
    for target in (job, ghost_job, missing):
        await hostile.send(hostile.forged_result(target, market.client.address))
        reject = await hostile.recv(Reject)
        assert reject.job_id == target["job_id"]
        assert reject.code in ("lease-lost", "not-bound"), reject
        rejects.append(reject.code)
    for target in (job, ghost_job):
        await hostile.send(Progress(target["job_id"], 99, "mine now"))
        await hostile.send(Heartbeat((target["job_id"],)))
        await hostile.send(Failed(target["job_id"], "sabotage", retryable=False))
        await hostile.send(Release((target["job_id"],), "sabotage", draining=False))
    cancel = await hostile.recv(Cancel)  # told to stop working on what it does not hold
    assert cancel.job_id in (job["job_id"], ghost_job["job_id"])

    now = await market.job(job["job_id"])
    assert (now["status"], now["miner_id"], now["attempts"]) == (
        "running",
        job["miner_id"],
        1,
    ), now
    assert now["error"] is None and now["progress"] < 99
    ghost_now = await market.job(ghost["job_id"])
    assert (ghost_now["status"], ghost_now["attempts"]) == ("queued", 0), ghost_now

    done = await market.wait(job["job_id"], "completed")
    assert done["attempts"] == 1 and done["miner_id"] == job["miner_id"]
    assert await market.paid_uait(market.hostile_key.address) == 0
    assert await market.paid_uait(market.honest_key.address) == round(done["cost"] * 1e6)
    status, _ = await market.call("DELETE", f"/v1/jobs/{ghost['job_id']}", market.client)
    assert status == 200
    await market.honest_still_serves()
    await hostile.ws.close()
    record("hostile_unheld_jobs", {"forged_results_rejected": rejects, "sabotage_frames": 8})


async def test_impersonation_malformed_binary_and_oversized_frames(market: Market) -> None:
    assert market.daemon is not None
    honest_id = market.daemon.identity.miner_id
    honest_public = market.daemon.identity.public_key
    headers = {"Authorization": f"Bearer {market.hostile_key.api_key}"}

    # Claiming the honest daemon's public key without its private key: refused, and the
    # honest connection is not replaced.
    async with connect(ws_url(market.url), additional_headers=headers) as ws:
        challenge = decode(await ws.recv())
        assert isinstance(challenge, Challenge)
        mine = generate_private_key()
        forged = Hello(honest_public, sign_hex(mine, auth_payload(challenge.nonce)), advert())
        await ws.send(encode(forged))
        err = decode(await ws.recv())
        assert isinstance(err, Error) and err.code == "bad-signature"
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4401
    status, miners = await market.call("GET", "/v1/miners", market.client)
    assert status == 200, miners
    assert honest_id in {m["miner_id"] for m in miners["miners"]}

    # Malformed frames get `bad-frame`; the tenth closes the socket with 4400.
    hostile = await HostileMiner.connect(market.url, market.hostile_key.api_key)
    garbage = [
        "not json",
        "[1, 2, 3]",
        '{"v": 2, "type": "heartbeat"}',
        '{"v": 1, "type": "mine-bitcoin"}',
        '{"v": 1, "type": "progress", "job_id": "job_1"}',
        '{"v": 1, "type": "progress", "job_id": "job_1", "percent": 1e400}',
        '{"v": 1, "type": "heartbeat", "running": ["../../etc/passwd"]}',
        '{"v": 1, "type": "result", "job_id": "job_1", "receipt": {"x": "'
        + "a" * 9000
        + '"}, "signature": {}, "output_b64": "", "content_type": "a", "filename": "f"}',
        '{"v": 1, "type": "hello", "public_key": "00", "signature": "00", "advert": {}}',
        '{"v": 1, "type": "heartbeat", "running": [], "utilisation": -1, "extra": 1}',
    ]
    errors = 0
    for frame in garbage:
        await hostile.ws.send(frame)
    with contextlib.suppress(ConnectionClosed):
        while True:
            msg = decode(await asyncio.wait_for(hostile.ws.recv(), 10))
            if isinstance(msg, Error):
                assert msg.code == "bad-frame", msg
                errors += 1
    assert errors == len(garbage) and hostile.ws.close_code == 4400

    # Binary frames are not the protocol: each is a bad frame; the tenth closes the socket.
    hostile = await HostileMiner.connect(market.url, market.hostile_key.api_key)
    binary_errors = 0
    with contextlib.suppress(ConnectionClosed):
        for _ in range(10):
            await hostile.ws.send(b"\x00\xff" * 512)
        while True:
            msg = decode(await asyncio.wait_for(hostile.ws.recv(), 10))
            if isinstance(msg, Error):
                assert msg.code == "bad-frame" and "binary" in msg.message, msg
                binary_errors += 1
    assert binary_errors == 10 and hostile.ws.close_code == 4400

    # One frame larger than MAX_MESSAGE_BYTES: the coordinator drops the connection.
    hostile = await HostileMiner.connect(market.url, market.hostile_key.api_key)
    big = '{"v": 1, "type": "heartbeat", "running": [], "pad": "' + "x" * MAX_MESSAGE_BYTES + '"}'
    with contextlib.suppress(ConnectionClosed):
        await hostile.ws.send(big)
        await asyncio.wait_for(hostile.ws.recv(), 30)
    del big
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        await asyncio.wait_for(hostile.ws.wait_closed(), 30)
    assert hostile.ws.close_code is not None and hostile.ws.close_code != 1000
    oversized_close = hostile.ws.close_code

    assert await market.healthy()
    await market.honest_still_serves()
    assert await market.paid_uait(market.hostile_key.address) == 0
    record(
        "hostile_frames",
        {
            "impersonation": "closed 4401",
            "malformed_frames_answered_bad_frame": errors,
            "malformed_close_code": 4400,
            "binary_frames_answered_bad_frame": binary_errors,
            "oversized_frame_close_code": oversized_close,
        },
    )


async def test_frame_flood_does_not_starve_honest_miners(market: Market) -> None:
    """A miner sends thousands of frames naming jobs it does not hold and never reads the
    answers; the coordinator stays responsive and the honest daemon keeps completing."""
    hostile = await HostileMiner.connect(market.url, market.hostile_key.api_key)
    fake = tuple("job_" + secrets.token_hex(10) for _ in range(64))
    frames = 0
    flood_s = 8.0

    async def flood() -> None:
        nonlocal frames
        until = time.monotonic() + flood_s
        with contextlib.suppress(ConnectionClosed):
            while time.monotonic() < until:
                await hostile.send(Heartbeat(fake))
                await hostile.send(Progress(fake[frames % 64], 50, "flood"))
                frames += 2
                if frames % 64 == 0:
                    await asyncio.sleep(0)  # let the coordinator's tasks run in this loop

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(1.0)
    started = time.monotonic()
    submitted = [await market.submit(input={"n": n}) for n in range(3)]
    for sub in submitted:
        await market.wait(sub["job_id"], "completed", within_s=60)
    served_s = time.monotonic() - started
    assert await market.healthy()
    await flooding
    await hostile.ws.close()
    assert await market.paid_uait(market.hostile_key.address) == 0
    await market.honest_still_serves()
    record(
        "hostile_flood",
        {
            "frames_sent": frames,
            "job_ids_named_in_frames_sent": frames // 2 * 65,
            "flood_s": flood_s,
            "three_honest_jobs_completed_in_s": round(served_s, 2),
        },
    )


async def _never_reading(market: Market, model: str = "echo") -> HostileMiner:
    """A hostile miner whose socket stops being read after a frame or two: a tiny receive
    buffer, and a client queue of one frame (the library then stops reading)."""
    host, port = market.url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await HostileMiner.connect(
        market.url, market.hostile_key.api_key, offer=advert(model=model), sock=sock, max_queue=1
    )


def _flood_unread(hostile: HostileMiner, sent: list[int]) -> asyncio.Task[None]:
    """Progress frames naming jobs it does not hold: each earns a `cancel` it never reads.
    Ends when the coordinator cuts the connection."""

    async def flood() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await hostile.send(Progress("job_" + secrets.token_hex(10), 50, "never reads"))
                sent[0] += 1

    return asyncio.create_task(flood())


async def test_miner_that_never_reads_is_cut_off(market: Market) -> None:
    """The frames the coordinator owes a miner that never reads pile up until a send
    would block. The coordinator cuts it off (a blocked send would stall whoever sends:
    the dispatcher, a settlement), and the honest daemon is served meanwhile."""
    hostile = await _never_reading(market)
    sent = [0]
    started = time.monotonic()
    flooding = _flood_unread(hostile, sent)
    submitted = [await market.submit(input={"n": n}) for n in range(3)]
    for sub in submitted:
        await market.wait(sub["job_id"], "completed", within_s=60)
    try:
        async with asyncio.timeout(90):
            await flooding
    finally:
        flooding.cancel()
    cut_off_s = time.monotonic() - started
    assert await market.healthy()
    assert await market.paid_uait(market.hostile_key.address) == 0
    await market.honest_still_serves()
    record("hostile_never_reads", {"frames_sent": sent[0], "cut_off_after_s": round(cut_off_s, 2)})


async def test_miner_with_unread_frames_gets_no_assignment(market: Market) -> None:
    """While frames pile up unread on a miner's socket it is left out of planning: a job
    only it could run waits queued instead of being pushed into the backlog (where the
    dispatcher's send would block)."""
    hostile = await _never_reading(market, model="only-the-hostile")
    registry = market.coordinator.app[MINER_REGISTRY]
    conn = registry.get(hostile.welcome.miner_id)
    assert conn is not None and conn.writable()
    sent = [0]
    flooding = _flood_unread(hostile, sent)
    try:
        for _ in range(6000):  # 60 s at most
            if not conn.writable():
                break
            await asyncio.sleep(0.01)
        assert not conn.writable(), f"still writable after {sent[0]} unread frames"
        sub = await market.submit(model="only-the-hostile")
        await asyncio.sleep(1.0)  # dispatch rounds run on submit and on the 1 s poll
        job = await market.job(sub["job_id"])
        assert job["status"] == "queued" and job["attempts"] == 0, job
    finally:
        flooding.cancel()
    assert await market.paid_uait(market.hostile_key.address) == 0
    await market.honest_still_serves()
    record("hostile_backlogged", {"frames_sent_until_backlogged": sent[0]})
