"""A small incremental parser for server-sent events (text/event-stream), sans I/O.

Feed it lines; it returns a finished `SseEvent` at each blank line. Comment lines
(`: keep-alive`) and unknown fields are ignored, as the HTML standard says.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENT_BYTES = 1 << 20  # an event larger than this is cut off: a limit on everything


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" when the stream named none
    data: str
    id: str | None = None


class SseParser:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._id: str | None = None

    def feed_line(self, raw: bytes | str) -> SseEvent | None:
        line = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._size += len(value) + 1
            if self._size <= MAX_EVENT_BYTES:
                self._data.append(value)
        elif name == "id":
            self._id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._data and not self._event:
            return None
        event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data, self._size = "", [], 0
        return event
