"""Sliding-window rate limits per API key (SPEC §3: the 61st request in any 60 s is 429).

Each key keeps the times of its accepted requests from the last hour (at most `per_hour`
of them, so memory is bounded by the limit), and the number of keys tracked is bounded
too (least recently used first out). Rejected requests are not counted.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from coordinator.settings import RateLimit

MINUTE_S = 60.0
HOUR_S = 3600.0
MAX_KEYS = 100_000


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # the tightest configured limit (X-RateLimit-Limit); 0 = unlimited
    remaining: int
    retry_after_s: int = 0


class RateLimiter:
    def __init__(self) -> None:
        self._hits: OrderedDict[str, list[float]] = OrderedDict()

    def check(self, key_id: str, limit: RateLimit, now: float | None = None) -> Decision:
        """Count one request for `key_id` if it fits both windows."""
        now = time.monotonic() if now is None else now
        if limit.per_minute == 0 and limit.per_hour == 0:
            return Decision(True, 0, 0)
        hits = self._hits.get(key_id)
        if hits is None:
            hits = self._hits[key_id] = []
            if len(self._hits) > MAX_KEYS:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key_id)
        horizon = HOUR_S if limit.per_hour else MINUTE_S
        del hits[: bisect.bisect_right(hits, now - horizon)]
        windows = [(n, w) for n, w in ((limit.per_minute, MINUTE_S), (limit.per_hour, HOUR_S)) if n]
        remaining = []
        retry = 0.0
        for cap, window in windows:
            start = bisect.bisect_right(hits, now - window)
            used = len(hits) - start
            if used >= cap:
                # The request that will leave the window first is the `used - cap + 1`-th.
                oldest = hits[start + used - cap]
                retry = max(retry, oldest + window - now)
            remaining.append(cap - used)
        tight = min(windows, key=lambda w: w[0])[0]
        if retry > 0:
            return Decision(False, tight, 0, max(1, math.ceil(retry)))
        hits.append(now)
        return Decision(True, tight, max(0, min(remaining) - 1))
