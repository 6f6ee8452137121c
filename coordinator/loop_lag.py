"""Event-loop lag: how late a timer fires, kept as a histogram for /metrics.

Everything the coordinator does runs on one event loop (on SQLite its database writes
too), so a request, a dispatch or a miner's frame waits for whatever holds the loop. A
timer is set every INTERVAL_S; how late it fires is how long the loop was held when it
fell due. Its tail is the tail that submit->dispatch and every request share
(docs/benchmarks.md, round 21).
"""

from __future__ import annotations

import asyncio

from coordinator.metrics import STALL_SECONDS_BOUNDS, Histogram

INTERVAL_S = 0.05  # 20 timers a second: ~microseconds of the loop's time


class LoopLag:
    """A timer re-armed every `interval` seconds on the running loop; each firing observes
    how late it was (seconds) in `histogram`."""

    def __init__(self, interval: float = INTERVAL_S) -> None:
        self.histogram = Histogram(STALL_SECONDS_BOUNDS)  # the first, 1 ms: libuv's timer rounding
        self._interval = interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        assert self._loop is not None
        due = self._loop.time() + self._interval
        self._timer = self._loop.call_at(due, self._fired, due)

    def _fired(self, due: float) -> None:
        assert self._loop is not None
        self.histogram.observe(max(0.0, self._loop.time() - due))
        self._arm()


__all__ = ["INTERVAL_S", "LoopLag"]
