"""Cyclic garbage-collector settings for the long-running daemons (coordinator, miner)."""

from __future__ import annotations

import gc

# Nearly every per-request object dies by reference counting; the cyclic collector mostly
# re-walks young objects that are about to be freed anyway. At CPython's default gen-0
# threshold (700) it ran ~25 times a second under load, ~5% of the coordinator's CPU, and
# its pauses landed inside requests (docs/benchmarks.md, round 4).
YOUNG_THRESHOLD = 20_000
MIDDLE_THRESHOLD = 20
OLD_THRESHOLD = 20


def tune_gc_after_startup() -> None:
    """Move what start-up allocated (modules, schema, the app) out of the
    collector's sight, and collect young objects less often. Call once the service is up:
    frozen objects are never collected, so only long-lived ones belong there."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
