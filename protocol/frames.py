"""Websocket frames of the miner protocol: one message each, or a batch where negotiated.

A miner that offers the websocket subprotocol ``BATCH_SUBPROTOCOL`` on its upgrade request,
and a coordinator that selects it, may both send a frame holding a JSON array of v1
messages (1 to ``MAX_BATCH_MESSAGES``) as well as single message objects; either side
without it sends and accepts single objects only, as before. The messages themselves do
not change (docs/protocol.md, "Batch frames").

``FrameSender`` is how each side writes: messages sent while a frame is being written, or
in the same event-loop turn, leave together in the next frame (group commit for frames:
no timer, so a lone message waits for nothing). Without the subprotocol it writes one
frame per message, in order, which also serialises writers on one socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from protocol.limits import MAX_BATCH_FRAME_CHARS, MAX_BATCH_MESSAGES, MAX_BATCHED_MESSAGE_CHARS
from protocol.messages import Message, decode_object, encode, load_json
from protocol.wirefields import ProtocolError

BATCH_SUBPROTOCOL = "ait-miner.v1.batch"


def decode_frame(frame: str | bytes, *, batches: bool) -> list[Message | ProtocolError]:
    """The messages of one frame, in order; a batch member that is malformed is returned
    as its ``ProtocolError`` in its place (the others still count). A frame that is not
    JSON, not an object or (where ``batches``) an array of 1..MAX_BATCH_MESSAGES raises."""
    data = load_json(frame)
    if not isinstance(data, list):
        return [_decoded(data)]
    if not batches:
        raise ProtocolError(
            f"a JSON array frame (a batch) needs the {BATCH_SUBPROTOCOL} websocket subprotocol"
        )
    if not 1 <= len(data) <= MAX_BATCH_MESSAGES:
        raise ProtocolError(f"a batch frame holds 1 to {MAX_BATCH_MESSAGES} messages")
    out: list[Message | ProtocolError] = []
    for i, item in enumerate(data):
        msg = _decoded(item)
        if isinstance(msg, ProtocolError):
            msg = ProtocolError(f"batch message {i}: {msg}")
        out.append(msg)
    return out


def _decoded(data: object) -> Message | ProtocolError:
    try:
        return decode_object(data)
    except ProtocolError as exc:
        return exc


def pack(texts: list[str], *, batches: bool) -> list[tuple[str, int]]:
    """Encoded messages as frames, in order: ``(frame, how many messages it holds)``. A
    message above MAX_BATCHED_MESSAGE_CHARS (a large input or output) goes alone."""
    if not batches:
        return [(t, 1) for t in texts]
    frames: list[tuple[str, int]] = []
    group: list[str] = []
    size = 0

    def close_group() -> None:
        nonlocal size
        if group:
            frame = group[0] if len(group) == 1 else "[" + ",".join(group) + "]"
            frames.append((frame, len(group)))
            group.clear()
            size = 0

    for text in texts:
        if len(text) > MAX_BATCHED_MESSAGE_CHARS:
            close_group()
            frames.append((text, 1))
            continue
        if len(group) == MAX_BATCH_MESSAGES or size + len(text) + 2 > MAX_BATCH_FRAME_CHARS:
            close_group()
        group.append(text)
        size += len(text) + 1
    close_group()
    return frames


class FrameSender:
    """Writes one connection's messages through ``write`` (one writer at a time), grouping
    those that wait together into batch frames when ``batches``."""

    def __init__(
        self,
        write: Callable[[str], Awaitable[object]],
        *,
        batches: bool,
        written: Callable[[int], None] | None = None,
    ) -> None:
        self._write = write
        self.batches = batches
        self._written = written  # told the message count of each frame written (metrics)
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def send(self, msg: Message) -> None:
        """Returns once the frame holding ``msg`` is written; raises what the write raised."""
        await self.send_text(encode(msg))

    async def send_text(self, text: str) -> None:
        """``send`` for a message already encoded (``protocol.messages.encode``)."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((text, done))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_waiting())
        await done

    async def _write_waiting(self) -> None:
        try:
            while self._waiting:
                taken, self._waiting = self._waiting, []
                start = 0
                for frame, count in pack([t for t, _ in taken], batches=self.batches):
                    futures = [f for _, f in taken[start : start + count]]
                    start += count
                    try:
                        await self._write(frame)
                    except BaseException as exc:  # every sender of this frame hears of it
                        _settle(futures, exc)
                        _settle([f for _, f in taken[start:]], exc)
                        if not isinstance(exc, Exception):
                            raise
                        break
                    if self._written is not None:
                        self._written(count)
                    _settle(futures, None)
        finally:
            self._writer = None


def _settle(futures: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for f in futures:
        if f.done():
            continue  # its sender stopped waiting (a time-out); nobody reads it
        if exc is None:
            f.set_result(None)
        elif isinstance(exc, Exception):
            f.set_exception(exc)
        else:
            f.cancel()
