"""The daemons' collector settings: start-up objects frozen, cycles still collected."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# In a child process: freezing and thresholds are process-wide and would leak into the
# rest of the test session.
CHILD = textwrap.dedent(
    """
    import gc, json, weakref
    from protocol.gc_tuning import YOUNG_THRESHOLD, tune_gc_after_startup

    class Node:
        pass

    startup = [Node() for _ in range(1000)]
    tune_gc_after_startup()
    frozen = gc.get_freeze_count()

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: reference counting alone never frees it
    alive = weakref.ref(a)
    del a, b
    churn = [[] for _ in range(2 * YOUNG_THRESHOLD)]  # allocations trigger a collection
    print(json.dumps({"threshold": gc.get_threshold(), "frozen": frozen,
                      "cycle_alive": alive() is not None}))
    """
)


def test_startup_objects_are_frozen_and_later_cycles_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60
    )
    report = json.loads(done.stdout)
    assert report["threshold"] == [20_000, 20, 20]
    assert report["frozen"] >= 1000  # the start-up objects, at least
    assert report["cycle_alive"] is False  # the collector still runs on its own
