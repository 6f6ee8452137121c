"""Prometheus text exposition (format 0.0.4) for a few counters, gauges and histograms; no
dependency."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    parts = []
    for key, value in sorted(labels.items()):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{key}="{escaped}"')
    return "{" + ",".join(parts) + "}"


# Buckets for stalls of the event loop (1 ms to 1 s): the group commits' durations (on
# SQLite each one holds the loop) and how late the loop-lag timer fires. One set, so the
# bench reads both histograms the same way.
STALL_SECONDS_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    """Observations (seconds) counted into buckets by upper bound, as Prometheus keeps them:
    bucket `le` counts every observation <= le, the last (`+Inf`) all of them."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)  # per bucket, the last above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def lines(self, name: str) -> list[str]:
        """The `name_bucket`, `name_sum` and `name_count` samples."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, None), self._counts, strict=True):
            running += count
            le = "+Inf" if bound is None else f"{bound:g}"
            out.append(f"{name}_bucket{_labels({'le': le})} {running}")
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {running}")
        return out


class Metrics:
    """Counters updated on the hot path; gauges are computed at scrape time by the caller."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status)
        self.request_seconds_sum: dict[tuple[str, str], float] = {}
        self.jobs_submitted: Counter[str] = Counter()  # by chain
        self.rate_limited = 0
        self.sse_streams = 0
        # Miner websocket frames and the messages in them, by direction ("in", "out"):
        # their ratio is how well batch frames group (protocol/frames.py).
        self.miner_frames: Counter[str] = Counter()
        self.miner_messages: Counter[str] = Counter()
        # Blocks drafted by where ("event_loop", "helper"; coordinator.service.sealer).
        self.blocks_drafted: Counter[str] = Counter()
        # Result signatures by where they were verified ("event_loop", "thread";
        # coordinator.hub.verifier).
        self.signatures_verified: Counter[str] = Counter()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        key = (method, route)
        self.request_seconds_sum[key] = self.request_seconds_sum.get(key, 0.0) + seconds

    def render(
        self,
        gauges: Iterable[tuple[str, str, str, Mapping[str, str], float]],
        histograms: Iterable[tuple[str, str, Histogram]] = (),
    ) -> str:
        """`gauges`: (name, type, help, labels, value) computed by the caller;
        `histograms`: (name, help, histogram)."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        family("ait_http_requests_total", "counter", "HTTP requests by method, route, status.")
        for (method, route, status), count in sorted(self.requests.items()):
            labels = {"method": method, "route": route, "status": str(status)}
            lines.append(f"ait_http_requests_total{_labels(labels)} {count}")
        family("ait_http_request_seconds_sum", "counter", "Total seconds spent handling requests.")
        for (method, route), seconds in sorted(self.request_seconds_sum.items()):
            pair = {"method": method, "route": route}
            lines.append(f"ait_http_request_seconds_sum{_labels(pair)} {seconds:.6f}")
        family("ait_jobs_submitted_total", "counter", "Jobs accepted by this process.")
        for chain_id, count in sorted(self.jobs_submitted.items()):
            lines.append(f"ait_jobs_submitted_total{_labels({'chain_id': chain_id})} {count}")
        family("ait_rate_limited_total", "counter", "Requests answered 429.")
        lines.append(f"ait_rate_limited_total {self.rate_limited}")
        family("ait_sse_streams", "gauge", "Open job event streams.")
        lines.append(f"ait_sse_streams {self.sse_streams}")
        family("ait_miner_frames_total", "counter", "Miner websocket frames by direction.")
        for direction, count in sorted(self.miner_frames.items()):
            lines.append(f"ait_miner_frames_total{_labels({'direction': direction})} {count}")
        family("ait_miner_messages_total", "counter", "Miner protocol messages by direction.")
        for direction, count in sorted(self.miner_messages.items()):
            lines.append(f"ait_miner_messages_total{_labels({'direction': direction})} {count}")
        seen: set[str] = set()
        for name, kind, help_text, gauge_labels, value in gauges:
            if name not in seen:
                family(name, kind, help_text)
                seen.add(name)
            lines.append(f"{name}{_labels(gauge_labels)} {value:g}")
        for name, help_text, histogram in histograms:
            family(name, "histogram", help_text)
            lines.extend(histogram.lines(name))
        return "\n".join(lines) + "\n"
