"""Hostile and broken miners against a real coordinator: auth failures, bad frames and bad
results (bad/empty signature, another miner's key, another job's id, changed output,
unbound receipt, replay) are rejected, never paid, and the coordinator stays up; a miner
that stops renewing its lease is told to stop and the job goes out again."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_hub_flow import Stack, StackFactory, stacks
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from chain.receipts import build_receipt, sign_receipt
from coordinator.appkeys import DATABASE
from coordinator.service.keys import authenticate, revoke_key
from protocol.canonical import sha256_hex
from protocol.keys import PrivateKey, generate_private_key, public_key_hex, sign_hex
from protocol.messages import (
    Advert,
    Assign,
    Cancel,
    Challenge,
    Error,
    GpuInfo,
    Hello,
    Message,
    ModelOffer,
    Reject,
    Result,
    Resume,
    Welcome,
    auth_payload,
    decode,
    encode,
)
from protocol.timefmt import iso_ms, now_ms


@pytest.fixture
async def stack_factory(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    async with stacks(coordinator_factory, tmp_path) as make:
        yield make


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


ADVERT = Advert(
    gpus=(GpuInfo("cpu", 0, 1),),
    models=(ModelOffer("echo", "echo", "byte", 2),),
    max_concurrency=1,
    software_version="raw-test/1",
)


class RawMiner:
    """A miner speaking the wire protocol by hand, so a test can send anything."""

    def __init__(self, ws: ClientConnection, key: PrivateKey, welcome: Welcome) -> None:
        self.ws, self.key, self.welcome = ws, key, welcome

    @classmethod
    async def connect(
        cls,
        url: str,
        api_key: str,
        key: PrivateKey | None = None,
        *,
        advert: Advert = ADVERT,
        subprotocols: list[Subprotocol] | None = None,
    ) -> RawMiner:
        key = key or generate_private_key()
        ws = await connect(
            url.replace("http", "ws") + "/v1/miners/ws",
            additional_headers={"Authorization": f"Bearer {api_key}"},
            subprotocols=subprotocols,
        )
        challenge = decode(await ws.recv())
        assert isinstance(challenge, Challenge)
        signature = sign_hex(key, auth_payload(challenge.nonce))
        await ws.send(encode(Hello(public_key_hex(key), signature, advert)))
        welcome = decode(await ws.recv())
        if not isinstance(welcome, Welcome):
            await ws.close()
            raise AssertionError(welcome)
        await ws.send(encode(Resume()))
        return cls(ws, key, welcome)

    async def recv(self, kind: type[Any], within_s: float = 10) -> Any:
        """The next frame of ``kind`` (heartbeat answers and others are skipped)."""
        async with asyncio.timeout(within_s):
            while True:
                msg = decode(await self.ws.recv())
                if isinstance(msg, kind):
                    return msg

    async def send(self, msg: Message) -> None:
        await self.ws.send(encode(msg))

    def result(
        self,
        a: Assign,
        output: bytes,
        *,
        signer: PrivateKey | None = None,
        job_id: str | None = None,
        **receipt_changes: Any,
    ) -> Result:
        signer = signer or self.key
        fields: dict[str, Any] = {
            "job_id": a.job_id,
            "chain_id": a.chain_id,
            "miner_address": self.welcome.address,
            "client_address": a.client_address,
            "model": a.model,
            "input_sha256": a.input_sha256,
            "output_sha256": sha256_hex(output),
            "units": len(output),
            "unit": a.unit,
            "price_uait_per_unit": a.price_uait_per_unit,
            "attempt": a.attempt,
            "started_at": iso_ms(now_ms()),
            "completed_at": iso_ms(now_ms()),
            "public_key": public_key_hex(signer),
            **receipt_changes,
        }
        receipt = build_receipt(**fields)
        return Result(
            job_id=job_id or a.job_id,
            receipt=receipt,
            signature=sign_receipt(signer, receipt),
            output_b64=base64.b64encode(output).decode(),
            content_type="application/json",
            filename="output.json",
        )


RawFactory = Callable[..., Awaitable[RawMiner]]


@pytest.fixture
async def raw() -> AsyncIterator[RawFactory]:
    """``await raw(url, api_key, key=None)``: a RawMiner, closed after the test."""
    opened: list[RawMiner] = []

    async def connect(
        url: str, api_key: str, key: PrivateKey | None = None, **options: Any
    ) -> RawMiner:
        miner = await RawMiner.connect(url, api_key, key, **options)
        opened.append(miner)
        return miner

    yield connect
    for miner in opened:
        await miner.ws.close()


def _output(a: Assign) -> bytes:
    assert a.input_json is not None
    return json.dumps(json.loads(a.input_json), separators=(",", ":")).encode()


async def _paid(stack: Stack, address: str) -> int:
    balance: float = (await stack.balance(address))["balance"]
    return round(balance * 1e6)


async def test_bad_results_are_rejected_never_paid_and_retried_then_failed(
    stack: Stack, raw: RawFactory
) -> None:
    miner_key, miner_addr = await stack.key("miner")
    client_key, client_addr = await stack.client(100)
    before = await stack.balance(client_addr)
    evil = await raw(stack.url, miner_key)
    other_key = generate_private_key()

    # Job 1: empty signature, a flipped signature, another miner's key -> failed.
    sub1 = await stack.submit(client_key)
    a = await evil.recv(Assign)
    assert a.job_id == sub1["job_id"] and a.attempt == 1
    empty = evil.result(a, _output(a))
    await evil.send(Result(**{**empty.__dict__, "signature": {}}))
    rej = await evil.recv(Reject)
    assert (rej.job_id, rej.code) == (a.job_id, "bad-signature")

    a = await evil.recv(Assign)
    assert a.attempt == 2
    good = evil.result(a, _output(a))
    sig = dict(good.signature)
    sig["sig"] = ("0" if sig["sig"][0] != "0" else "1") + sig["sig"][1:]
    await evil.send(Result(**{**good.__dict__, "signature": sig}))
    assert (await evil.recv(Reject)).code == "bad-signature"

    a = await evil.recv(Assign)
    assert a.attempt == 3
    await evil.send(evil.result(a, _output(a), signer=other_key))
    rej = await evil.recv(Reject)
    assert rej.code == "not-bound" and "another miner's key" in rej.reason
    job = await stack.wait_status(client_key, sub1["job_id"], "failed")
    assert job["attempts"] == 3 and "result rejected (not-bound)" in job["error"]

    # Job 2: another job's id, an unbound (signed) input hash, changed output -> failed.
    sub2 = await stack.submit(client_key)
    a = await evil.recv(Assign)
    await evil.send(evil.result(a, _output(a), job_id=sub1["job_id"]))  # receipt of job 2
    assert (await evil.recv(Reject)).code in ("not-bound", "lease-lost")
    await evil.send(evil.result(a, _output(a), input_sha256=sha256_hex(b"something else")))
    rej = await evil.recv(Reject)
    assert rej.code == "not-bound" and "input_sha256" in rej.reason
    a = await evil.recv(Assign)
    assert a.job_id == sub2["job_id"] and a.attempt == 2
    honest = evil.result(a, _output(a))
    await evil.send(Result(**{**honest.__dict__, "output_b64": base64.b64encode(b'"x"').decode()}))
    assert (await evil.recv(Reject)).code == "bad-output"
    a = await evil.recv(Assign)
    assert a.attempt == 3
    receipt = dict(evil.result(a, _output(a)).receipt)
    receipt["output_sha256"] = sha256_hex(b"changed after signing")
    signed = evil.result(a, _output(a))
    await evil.send(Result(**{**signed.__dict__, "receipt": receipt}))
    assert (await evil.recv(Reject)).code == "bad-signature"
    job = await stack.wait_status(client_key, sub2["job_id"], "failed")
    assert job["attempts"] == 3

    # Nothing was ever paid; every escrow came back; the coordinator is up.
    assert await _paid(stack, miner_addr) == 0
    after = await stack.balance(client_addr)
    assert after["available"] == before["available"] and after["held"] == 0
    async with stack.http.get(stack.url + "/healthz") as r:
        assert r.status == 200


async def test_a_miner_that_stops_renewing_is_told_to_stop_and_the_job_goes_again(
    stack: Stack, raw: RawFactory
) -> None:
    """This miner sends no heartbeat, so its lease (1.5 s) runs out while it is still
    connected: the reaper requeues the job and sends it `cancel` (found by the miner the
    job names), then the job is assigned again, as attempt 2."""
    miner_key, miner_addr = await stack.key("miner")
    client_key, _ = await stack.client(100)
    quiet = await raw(stack.url, miner_key)
    sub = await stack.submit(client_key)
    first = await quiet.recv(Assign)
    assert (first.job_id, first.attempt) == (sub["job_id"], 1)
    cancel = await quiet.recv(Cancel)
    assert cancel.job_id == first.job_id and cancel.reason == "lease expired"
    again = await quiet.recv(Assign)
    assert (again.job_id, again.attempt) == (first.job_id, 2)
    await quiet.send(quiet.result(again, _output(again)))
    await stack.wait_status(client_key, sub["job_id"], "completed")
    assert await _paid(stack, miner_addr) > 0


async def test_replayed_result_is_rejected_and_paid_once(stack: Stack, raw: RawFactory) -> None:
    miner_key, miner_addr = await stack.key("miner")
    client_key, _ = await stack.client(100)
    miner = await raw(stack.url, miner_key)
    sub = await stack.submit(client_key)
    a = await miner.recv(Assign)
    result = miner.result(a, _output(a))
    await miner.send(result)
    await stack.wait_status(client_key, sub["job_id"], "completed")
    paid = await _paid(stack, miner_addr)
    assert paid > 0
    await miner.send(result)  # same connection
    rej = await miner.recv(Reject)
    assert rej.code == "duplicate"
    await miner.ws.close()
    again = await raw(stack.url, miner_key, miner.key)  # after a reconnect
    await again.send(result)
    assert (await again.recv(Reject)).code == "duplicate"
    # The same result sent by another daemon of the same operator: not its receipt.
    other = await raw(stack.url, miner_key)
    await other.send(result)
    assert (await other.recv(Reject)).code == "not-bound"
    assert await _paid(stack, miner_addr) == paid
    job = await stack.job(client_key, sub["job_id"])
    assert job["status"] == "completed" and job["attempts"] == 1


async def test_auth_failures(stack: Stack, raw: RawFactory) -> None:
    ws_url = stack.url.replace("http", "ws") + "/v1/miners/ws"
    client_key, _ = await stack.client(1)
    miner_key, _ = await stack.key("miner")
    with pytest.raises(InvalidStatus) as no_key:
        await connect(ws_url)
    assert no_key.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as wrong_role:
        await connect(ws_url, additional_headers={"X-Api-Key": client_key})
    assert wrong_role.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as unknown:
        await connect(ws_url, additional_headers={"Authorization": "Bearer ait_nope"})
    assert unknown.value.response.status_code == 401

    # The right key but a signature over another nonce: refused, socket closed.
    ws = await connect(ws_url, additional_headers={"X-Api-Key": miner_key})
    challenge = decode(await ws.recv())
    assert isinstance(challenge, Challenge)
    key = generate_private_key()
    await ws.send(encode(Hello(public_key_hex(key), sign_hex(key, auth_payload("other")), ADVERT)))
    err = decode(await ws.recv())
    assert isinstance(err, Error) and err.code == "bad-signature"
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 4401

    # A revoked key no longer connects.
    revoked_key, _ = await stack.key("miner")
    ok = await raw(stack.url, revoked_key)
    await ok.ws.close()
    record = await authenticate(stack.app[DATABASE], revoked_key)
    assert record is not None
    await revoke_key(stack.app[DATABASE], record.key_id)
    with pytest.raises(InvalidStatus) as gone:
        await raw(stack.url, revoked_key)
    assert gone.value.response.status_code == 401


async def test_bad_frames_get_an_error_and_the_connection_survives(
    stack: Stack, raw: RawFactory
) -> None:
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(10)
    miner = await raw(stack.url, miner_key)
    await miner.ws.send('{"v": 1, "type": "progress", "job_id": "j", "percent": 900}')
    err = await miner.recv(Error)
    assert err.code == "bad-frame" and "percent" in err.message
    await miner.ws.send("not json at all")
    assert (await miner.recv(Error)).code == "bad-frame"
    # Still connected and still served.
    sub = await stack.submit(client_key)
    a = await miner.recv(Assign)
    await miner.send(miner.result(a, _output(a)))
    await stack.wait_status(client_key, sub["job_id"], "completed")


async def test_connected_miners_per_key_are_bounded(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, raw: RawFactory
) -> None:
    import coordinator.hub.ws as hub_ws

    monkeypatch.setattr(hub_ws, "MAX_MINERS_PER_KEY", 2)
    miner_key, _ = await stack.key("miner")
    first = await raw(stack.url, miner_key)
    await raw(stack.url, miner_key)
    with pytest.raises(AssertionError, match="too-many-miners"):
        await raw(stack.url, miner_key)
    # The same daemon reconnecting replaces its own connection: not refused.
    again = await raw(stack.url, miner_key, first.key)
    assert again.welcome.miner_id == first.welcome.miner_id
    other_key, _ = await stack.key("miner")  # another operator is not affected
    await raw(stack.url, other_key)


async def test_concurrent_handshakes_cannot_exceed_the_per_key_bound(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, raw: RawFactory
) -> None:
    import coordinator.hub.ws as hub_ws

    monkeypatch.setattr(hub_ws, "MAX_MINERS_PER_KEY", 2)
    miner_key, _ = await stack.key("miner")
    outcomes = await asyncio.gather(
        *(raw(stack.url, miner_key) for _ in range(8)), return_exceptions=True
    )
    connected = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(connected) == 2, outcomes
    assert all("too-many-miners" in str(o) for o in refused)
    # A place freed by a daemon that left is taken by the next one.
    await connected[0].ws.close()
    for _ in range(100):
        try:
            await raw(stack.url, miner_key)
            break
        except AssertionError:
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the freed place was never given to a new daemon")
