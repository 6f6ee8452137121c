"""Batch frames on a real coordinator (docs/protocol.md, "Batch frames"): a miner that
offers the subprotocol gets assignments and answers grouped into JSON-array frames and may
send its results that way; a bad member is refused on its own; a miner that did not
negotiate it gets one message a frame and has an array refused; the daemon negotiates it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_hub_faults import ADVERT, RawMiner, _output
from test_hub_flow import Stack, StackFactory, stacks
from websockets.typing import Subprotocol

from coordinator.hub.verifier import MIN_BATCH
from protocol import ed25519_batch
from protocol.frames import BATCH_SUBPROTOCOL, decode_frame
from protocol.messages import (
    Ack,
    Advert,
    Assign,
    Error,
    Message,
    Progress,
    Reject,
    Result,
    encode,
)

BATCHES = [Subprotocol(BATCH_SUBPROTOCOL)]
EIGHT_SLOTS = Advert(ADVERT.gpus, ADVERT.models, 8, ADVERT.software_version)


@pytest.fixture
async def stack(
    coordinator_factory: Callable[..., Awaitable[Any]], tmp_path: Path
) -> AsyncIterator[Stack]:
    make: StackFactory
    async with stacks(coordinator_factory, tmp_path) as make:
        yield await make()


@dataclass(frozen=True)
class Keys:
    miner: str
    client: str  # funded with 100 AIT


@pytest.fixture
async def keys(stack: Stack) -> Keys:
    miner_key, _ = await stack.key("miner")
    client_key, _ = await stack.client(100)
    return Keys(miner_key, client_key)


Connect = Callable[..., Awaitable[RawMiner]]


@pytest.fixture
async def raw(stack: Stack, keys: Keys) -> AsyncIterator[Connect]:
    """`await raw(**options)`: a RawMiner on the stack with the miner key, closed after."""
    opened: list[RawMiner] = []

    async def connect(**options: Any) -> RawMiner:
        opened.append(await RawMiner.connect(stack.url, keys.miner, **options))
        return opened[-1]

    yield connect
    for miner in opened:
        await miner.ws.close()


async def _submit(stack: Stack, keys: Keys, count: int) -> list[str]:
    return [(await stack.submit(keys.client, input={"n": i}))["job_id"] for i in range(count)]


async def _frames_until(miner: RawMiner, kind: type[Any], count: int) -> list[list[Message]]:
    """Frames (each as its messages) until `count` messages of `kind` have arrived."""
    frames: list[list[Message]] = []
    while sum(isinstance(m, kind) for f in frames for m in f) < count:
        decoded = decode_frame(await miner.ws.recv(), batches=True)
        assert not any(isinstance(m, Exception) for m in decoded), decoded
        frames.append([m for m in decoded if not isinstance(m, Exception)])
    return frames


async def _metric(stack: Stack, name: str) -> float:
    async with stack.http.get(stack.url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def test_batched_assignments_results_and_acks(stack: Stack, keys: Keys, raw: Connect) -> None:
    jobs = await _submit(stack, keys, 8)
    miner = await raw(advert=EIGHT_SLOTS, subprotocols=BATCHES)
    assert miner.ws.subprotocol == BATCH_SUBPROTOCOL
    frames = await _frames_until(miner, Assign, 8)
    assigns = [m for f in frames for m in f if isinstance(m, Assign)]
    assert sorted(a.job_id for a in assigns) == sorted(jobs)
    # The eight were claimed in one round: they share frames instead of one each.
    assert max(len(f) for f in frames) > 1

    in_frames = await _metric(stack, 'ait_miner_frames_total{direction="in"}')
    results = [encode(miner.result(a, _output(a))) for a in assigns]
    await miner.ws.send("[" + ",".join(results) + "]")
    frames = await _frames_until(miner, Ack, 8)
    acks = [m.job_id for f in frames for m in f if isinstance(m, Ack)]
    assert sorted(acks) == sorted(jobs)
    assert max(len(f) for f in frames) > 1
    for job_id in jobs:
        await stack.wait_status(keys.client, job_id, "completed")
    # One frame in carried the eight results.
    assert await _metric(stack, 'ait_miner_frames_total{direction="in"}') == in_frames + 1


THREAD = 'ait_result_signatures_total{where="thread"}'
EVENT_LOOP = 'ait_result_signatures_total{where="event_loop"}'


@pytest.mark.skipif(not ed25519_batch.AVAILABLE, reason=ed25519_batch.UNAVAILABLE_REASON)
async def test_a_frames_signatures_are_verified_together_and_each_answered(
    stack: Stack, keys: Keys, raw: Connect
) -> None:
    jobs = await _submit(stack, keys, 8)
    miner = await raw(advert=EIGHT_SLOTS, subprotocols=BATCHES)
    assigns = [m for f in await _frames_until(miner, Assign, 8) for m in f if isinstance(m, Assign)]
    results = [miner.result(a, _output(a)) for a in assigns]
    flipped = dict(results[5].signature)
    flipped["sig"] = ("0" if flipped["sig"][0] != "0" else "1") + flipped["sig"][1:]
    results[5] = Result(**{**results[5].__dict__, "signature": flipped})
    changed = {**results[6].receipt, "units": results[6].receipt["units"] + 1}
    changed["cost_uait"] = changed["units"] * changed["price_uait_per_unit"]
    results[6] = Result(**{**results[6].__dict__, "receipt": changed})  # signed before
    not_hex = {**results[7].signature, "sig": "zz" * 64}  # cannot join the batch
    results[7] = Result(**{**results[7].__dict__, "signature": not_hex})
    thread, event_loop = await _metric(stack, THREAD), await _metric(stack, EVENT_LOOP)

    await miner.ws.send("[" + ",".join(encode(r) for r in results) + "]")
    answers: dict[str, Message] = {}
    while len(answers) < 8:
        for msg in decode_frame(await miner.ws.recv(), batches=True):
            if isinstance(msg, Ack | Reject):
                answers[msg.job_id] = msg
    good, bad = jobs_of(assigns[:5]), jobs_of(assigns[5:])
    assert {j for j, m in answers.items() if isinstance(m, Ack)} == good
    rejects = [m for m in answers.values() if isinstance(m, Reject)]
    assert {m.job_id for m in rejects} == bad
    assert {m.code for m in rejects} == {"bad-signature"}
    for job_id in good:
        await stack.wait_status(keys.client, job_id, "completed")
    # Seven went to the thread in one batch; the one with a non-hex signature was
    # checked on the loop, which named its fault like every other.
    assert MIN_BATCH <= 7
    assert await _metric(stack, THREAD) == thread + 7
    assert await _metric(stack, EVENT_LOOP) == event_loop + 1
    assert sorted(jobs) == sorted(good | bad)


def jobs_of(assigns: list[Assign]) -> set[str]:
    return {a.job_id for a in assigns}


async def test_a_bad_member_is_refused_alone(stack: Stack, keys: Keys, raw: Connect) -> None:
    [job_id] = await _submit(stack, keys, 1)
    miner = await raw(subprotocols=BATCHES)
    [a] = [m for f in await _frames_until(miner, Assign, 1) for m in f]
    assert isinstance(a, Assign)
    bad = json.dumps({"v": 1, "type": "progress", "job_id": a.job_id, "percent": 900})
    good = [encode(Progress(a.job_id, 50)), encode(miner.result(a, _output(a)))]
    await miner.ws.send(f"[{good[0]},{bad},{good[1]}]")
    frames = await _frames_until(miner, Ack, 1)
    errors = [m for f in frames for m in f if isinstance(m, Error)]
    assert len(errors) == 1 and errors[0].code == "bad-frame"
    assert errors[0].message.startswith("batch message 1: ") and "percent" in errors[0].message
    await stack.wait_status(keys.client, job_id, "completed")


async def test_without_the_subprotocol_frames_stay_single(
    stack: Stack, keys: Keys, raw: Connect
) -> None:
    jobs = await _submit(stack, keys, 4)
    miner = await raw(advert=EIGHT_SLOTS)
    assert miner.ws.subprotocol is None
    frames = await _frames_until(miner, Assign, 4)
    assert all(len(f) == 1 for f in frames)  # every frame one object
    assigns = [m for f in frames for m in f if isinstance(m, Assign)]
    await miner.ws.send("[" + encode(miner.result(assigns[0], _output(assigns[0]))) + "]")
    err = await miner.recv(Error)
    assert err.code == "bad-frame" and BATCH_SUBPROTOCOL in err.message
    for a in assigns:
        await miner.send(miner.result(a, _output(a)))
    for job_id in jobs:
        await stack.wait_status(keys.client, job_id, "completed")


async def test_the_daemon_negotiates_batch_frames(stack: Stack, keys: Keys) -> None:
    daemon = await stack.daemon(keys.miner, max_concurrency=4)
    assert daemon.batch_frames
    for job_id in await _submit(stack, keys, 6):
        await stack.wait_status(keys.client, job_id, "completed")
