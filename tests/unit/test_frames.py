"""protocol.frames: batch frames decode in order with bad members named in place, are
refused where not negotiated, pack within their bounds, and FrameSender groups messages
that wait together into one frame while keeping their order."""

from __future__ import annotations

import asyncio
import json

import pytest

from protocol.frames import FrameSender, decode_frame, pack
from protocol.limits import (
    MAX_BATCH_FRAME_CHARS,
    MAX_BATCH_MESSAGES,
    MAX_BATCHED_MESSAGE_CHARS,
)
from protocol.messages import Ack, Cancel, ProtocolError, decode, encode


def _acks(n: int) -> list[str]:
    return [encode(Ack(f"job_{i:04d}")) for i in range(n)]


def test_a_single_object_frame_decodes_with_or_without_batches() -> None:
    frame = encode(Ack("job_1"))
    assert decode_frame(frame, batches=False) == [Ack("job_1")]
    assert decode_frame(frame, batches=True) == [Ack("job_1")]


def test_a_batch_frame_decodes_in_order_and_names_a_bad_member_in_place() -> None:
    frame = "[" + ",".join([encode(Ack("job_1")), '{"v":1,"type":"ack"}', encode(Ack("job_3"))])
    decoded = decode_frame(frame + "]", batches=True)
    assert decoded[0] == Ack("job_1") and decoded[2] == Ack("job_3")
    bad = decoded[1]
    assert isinstance(bad, ProtocolError)
    assert str(bad).startswith("batch message 1: ") and "job_id" in str(bad)


def test_a_batch_frame_needs_the_subprotocol() -> None:
    with pytest.raises(ProtocolError, match="subprotocol"):
        decode_frame("[" + encode(Ack("job_1")) + "]", batches=False)


@pytest.mark.parametrize("count", [0, MAX_BATCH_MESSAGES + 1])
def test_a_batch_frame_holds_a_bounded_number_of_messages(count: int) -> None:
    with pytest.raises(ProtocolError, match=f"1 to {MAX_BATCH_MESSAGES}"):
        decode_frame("[" + ",".join(_acks(count)) + "]", batches=True)


def test_a_frame_that_is_not_json_is_refused_whole() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        decode_frame("[{", batches=True)


def test_pack_without_batches_is_one_frame_a_message() -> None:
    texts = _acks(3)
    assert pack(texts, batches=False) == [(t, 1) for t in texts]


def test_pack_groups_in_order_within_the_count_bound() -> None:
    texts = _acks(MAX_BATCH_MESSAGES + 3)
    frames = pack(texts, batches=True)
    assert [n for _, n in frames] == [MAX_BATCH_MESSAGES, 3]
    decoded = [m for f, _ in frames for m in decode_frame(f, batches=True)]
    assert decoded == [decode(t) for t in texts]


def test_pack_sends_one_message_as_a_plain_object() -> None:
    [(frame, count)] = pack(_acks(1), batches=True)
    assert count == 1 and isinstance(json.loads(frame), dict)


def test_a_large_message_goes_alone_and_frames_stay_under_the_char_bound() -> None:
    big = encode(Cancel("job_big", "x" * 1500))
    small = _acks(2)
    # A message above the batched bound (padded JSON text) is sent alone, in its place.
    huge = big[:-1] + " " * MAX_BATCHED_MESSAGE_CHARS + "}"
    frames = pack([small[0], huge, small[1]], batches=True)
    assert [(f == huge, n) for f, n in frames] == [(False, 1), (True, 1), (False, 1)]
    # Many medium messages: each frame under the batch frame bound.
    medium = [big] * 2000
    frames = pack(medium, batches=True)
    assert sum(n for _, n in frames) == 2000
    assert all(len(f) <= MAX_BATCH_FRAME_CHARS for f, _ in frames)
    assert len(frames) > 1


class _Socket:
    """Records the frames written; ``fail`` makes the next write raise."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.fail: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, frame: str) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.frames.append(frame)


async def test_sends_in_one_turn_leave_as_one_frame_in_order() -> None:
    sock = _Socket()
    counts: list[int] = []
    sender = FrameSender(sock.write, batches=True, written=counts.append)
    await asyncio.gather(*(sender.send(Ack(f"job_{i}")) for i in range(5)))
    assert len(sock.frames) == 1 and counts == [5]
    assert decode_frame(sock.frames[0], batches=True) == [Ack(f"job_{i}") for i in range(5)]


async def test_sends_while_a_frame_is_written_go_in_the_next_frame() -> None:
    sock = _Socket()
    sender = FrameSender(sock.write, batches=True)
    sock.gate.clear()
    first = asyncio.ensure_future(sender.send(Ack("job_0")))
    await asyncio.sleep(0)  # the writer has taken job_0 and waits on the socket
    later = [asyncio.ensure_future(sender.send(Ack(f"job_{i}"))) for i in (1, 2)]
    await asyncio.sleep(0)
    sock.gate.set()
    await asyncio.gather(first, *later)
    assert [len(decode_frame(f, batches=True)) for f in sock.frames] == [1, 2]


async def test_without_batches_each_message_is_its_own_frame() -> None:
    sock = _Socket()
    sender = FrameSender(sock.write, batches=False)
    await asyncio.gather(*(sender.send(Ack(f"job_{i}")) for i in range(3)))
    assert [decode(f) for f in sock.frames] == [Ack(f"job_{i}") for i in range(3)]


async def test_a_failed_write_reaches_every_sender_of_its_frame() -> None:
    sock = _Socket()
    sender = FrameSender(sock.write, batches=True)
    sock.fail = ConnectionResetError("gone")
    results = await asyncio.gather(
        *(sender.send(Ack(f"job_{i}")) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionResetError) for r in results)
    sock.fail = None  # the sender still works for later messages
    await sender.send(Ack("job_9"))
    assert decode_frame(sock.frames[-1], batches=True) == [Ack("job_9")]
