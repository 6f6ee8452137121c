"""plan() compares miners in groups that look alike; these properties hold it to the rule
stated miner by miner (docs/protocol.md, "Scheduling"): for each job in priority order,
the cheapest eligible miner with a slot left, then the one with most free slots, then
the lowest id."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.domain.matching import (
    JobDemand,
    MinerSnapshot,
    eligible,
    over_escrow,
    plan,
    sort_jobs,
)
from protocol.messages import GpuInfo, ModelOffer


def plan_miner_by_miner(
    jobs: Sequence[JobDemand], miners: Sequence[MinerSnapshot]
) -> list[tuple[str, str]]:
    slots = {m.miner_id: max(0, m.free_slots) for m in miners}
    pairs = []
    for job in sort_jobs(jobs):
        candidates = [m for m in miners if slots[m.miner_id] > 0 and eligible(m, job)]
        if not candidates:
            continue

        def rank(m: MinerSnapshot, job: JobDemand = job) -> tuple[int, int, str]:
            offer = m.offer(job.model)
            assert offer is not None
            return (job.cost(offer), -slots[m.miner_id], m.miner_id)

        best = min(candidates, key=rank)
        slots[best.miner_id] -= 1
        pairs.append((job.job_id, best.miner_id))
    return pairs


MODELS = ("gpt2", "llama", "echo")
gpus = st.sampled_from(
    [
        (GpuInfo("cpu", 0, 1),),
        (GpuInfo("v100", 16, 1),),
        (GpuInfo("v100", 16, 1, utilisation=80),),  # the same devices, busier
        (GpuInfo("a100-80gb", 80, 4),),
        (GpuInfo("rtx-4090", 24, 2), GpuInfo("cpu", 0, 1)),
    ]
)
offer = st.builds(
    ModelOffer,
    name=st.sampled_from(MODELS),
    runtime=st.just("text-generation"),
    unit=st.sampled_from(["token", "job"]),
    price_uait_per_unit=st.sampled_from([0, 5, 10, 20]),
)


@st.composite
def miners(draw: st.DrawFn) -> list[MinerSnapshot]:
    count = draw(st.integers(0, 12))
    out = []
    for i in range(count):
        models = draw(st.lists(offer, max_size=3, unique_by=lambda o: o.name))
        out.append(MinerSnapshot(f"m{i:02d}", draw(gpus), tuple(models), draw(st.integers(0, 3))))
    return draw(st.permutations(out))


@st.composite
def jobs(draw: st.DrawFn) -> list[JobDemand]:
    count = draw(st.integers(0, 15))
    out = []
    for i in range(count):
        out.append(
            JobDemand(
                job_id=f"j{i:02d}",
                model=draw(st.sampled_from(MODELS)),
                priority=draw(st.sampled_from(["high", "normal", "low"])),
                created_ms=draw(st.integers(0, 5)),
                gpu_type=draw(st.sampled_from([None, "v100", "a100", "cpu"])),
                gpu_count=draw(st.integers(1, 3)),
                min_vram_gb=draw(st.sampled_from([0, 16, 40])),
                max_price_uait=draw(st.sampled_from([None, 50, 200, 2_000])),
                estimated_units=draw(st.integers(1, 100)),
                held_uait=draw(st.sampled_from([0, 100, 1_000])),
                available_uait=draw(st.sampled_from([None, 0, 500])),
            )
        )
    return out


@settings(max_examples=400, deadline=None)
@given(jobs(), miners())
def test_plan_is_the_rule_miner_by_miner(js: list[JobDemand], ms: list[MinerSnapshot]) -> None:
    assert plan(js, ms) == plan_miner_by_miner(js, ms)


@settings(max_examples=200, deadline=None)
@given(jobs(), miners())
def test_over_escrow_by_distinct_offers_is_the_rule_miner_by_miner(
    js: list[JobDemand], ms: list[MinerSnapshot]
) -> None:
    offers: dict[str, set[ModelOffer]] = {}
    for m in ms:
        for each in m.models:
            offers.setdefault(each.name, set()).add(each)
    for job in js:
        by_miner = any(
            (o := m.offer(job.model)) is not None
            and (job.max_price_uait is None or job.cost(o) <= job.max_price_uait)
            and job.cost(o) > job.held_uait
            for m in ms
        )
        assert over_escrow(job, offers.get(job.model, ())) == by_miner


def test_many_alike_miners_share_out_by_free_slots_then_id() -> None:
    gpt2 = ModelOffer("gpt2", "text-generation", "token", 20)
    many = [MinerSnapshot(f"m{i:04d}", (GpuInfo("v100", 16, 1),), (gpt2,), 2) for i in range(1000)]
    many.append(MinerSnapshot("z", (GpuInfo("v100", 16, 1),), (gpt2,), 3))
    pairs = plan([JobDemand(f"j{i}", "gpt2", created_ms=i) for i in range(4)], many)
    # z has the most free slots until it is down to 2; then the least loaded by id, so the
    # jobs spread out rather than filling m0000 first.
    assert pairs == [("j0", "z"), ("j1", "m0000"), ("j2", "m0001"), ("j3", "m0002")]
