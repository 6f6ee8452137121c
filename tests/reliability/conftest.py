"""Fixtures of the reliability suite: a process cluster torn down after each test, and the
soak switch (AIT_SOAK=1 multiplies kills, requests and steps; see docs/reliability.md)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_cluster import Cluster


@pytest.fixture
def rng() -> random.Random:
    """Seeded randomness; the seed is printed so a failing run can be replayed with
    AIT_RELIABILITY_SEED."""
    seed = int(os.environ.get("AIT_RELIABILITY_SEED") or random.SystemRandom().randrange(2**32))
    print(f"AIT_RELIABILITY_SEED={seed}")
    return random.Random(seed)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`make_cluster(name, db_url="", **settings)`: a cluster under tmp_path; every cluster
    made is stopped (SIGTERM, then SIGKILL) after the test."""
    made: list[Cluster] = []

    def make(name: str = "cluster", db_url: str = "", **settings: Any) -> Cluster:
        workdir = tmp_path / name
        workdir.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(workdir, db_url, **settings)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
