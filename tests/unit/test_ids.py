"""protocol.ids: job ids sort in the order one process made them, within a millisecond
and across milliseconds, and stay unique."""

from __future__ import annotations

import re

from protocol.ids import new_job_id


def test_job_ids_made_in_one_millisecond_sort_in_order() -> None:
    ids = [new_job_id(1_764_900_000_000) for _ in range(300)]
    assert ids == sorted(ids) and len(set(ids)) == 300
    assert all(re.fullmatch(r"job_[0-9a-f]{24}", i) for i in ids)


def test_a_later_millisecond_sorts_after_and_restarts_the_sequence() -> None:
    first = new_job_id(1_764_900_000_000)
    later = new_job_id(1_764_900_000_001)
    assert first < later and later[4:16] == f"{1_764_900_000_001:012x}"
    assert later[16:20] == "0000"
