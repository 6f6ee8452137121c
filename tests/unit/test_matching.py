"""coordinator.domain.matching: eligibility, priority order, capacity and queue reasons."""

from __future__ import annotations

import subprocess
import sys

from coordinator.domain.matching import (
    JobDemand,
    MinerSnapshot,
    eligible,
    over_escrow,
    plan,
    queue_reason,
    sort_jobs,
)
from protocol.messages import GpuInfo, ModelOffer

GPT2 = ModelOffer("gpt2", "text-generation", "token", 20)


def miner(
    mid: str,
    gpus: tuple[GpuInfo, ...] = (GpuInfo("v100", 16, 1),),
    models: tuple[ModelOffer, ...] = (GPT2,),
    free: int = 1,
) -> MinerSnapshot:
    return MinerSnapshot(mid, gpus, models, free)


def job(jid: str = "job_a", **kw: object) -> JobDemand:
    return JobDemand(job_id=jid, model=str(kw.pop("model", "gpt2")), **kw)  # type: ignore[arg-type]


def test_model_price_and_hardware_decide_eligibility() -> None:
    v100 = miner("m1")
    cpu = miner("m2", gpus=(GpuInfo("cpu", 0, 1),))
    big = miner("m3", gpus=(GpuInfo("a100-80gb", 80, 4),))
    assert eligible(v100, job())
    assert eligible(cpu, job())  # no hardware asked: a CPU miner may run it
    assert not eligible(cpu, job(min_vram_gb=1))
    assert not eligible(v100, job(model="llama"))
    assert eligible(big, job(gpu_type="a100")) and eligible(big, job(gpu_type="a100-80gb"))
    assert not eligible(v100, job(gpu_type="a100"))
    assert eligible(big, job(gpu_count=4, min_vram_gb=80))
    assert not eligible(big, job(gpu_count=5))
    assert not eligible(v100, job(min_vram_gb=24))
    assert eligible(cpu, job(gpu_type="cpu"))
    assert not eligible(v100, job(gpu_type="cpu"))
    # max_price caps the whole job: price x estimated units.
    assert eligible(v100, job(max_price_uait=2000, estimated_units=100))
    assert not eligible(v100, job(max_price_uait=1999, estimated_units=100))


def test_priority_then_fifo() -> None:
    jobs = [
        job("j1", priority="low", created_ms=1),
        job("j2", priority="normal", created_ms=3),
        job("j3", priority="high", created_ms=5),
        job("j4", priority="normal", created_ms=2),
        job("j5", priority="high", created_ms=4),
    ]
    assert [j.job_id for j in sort_jobs(jobs)] == ["j5", "j3", "j4", "j2", "j1"]
    pairs = plan(jobs, [miner("m1", free=2)])
    assert pairs == [("j5", "m1"), ("j3", "m1")]


def test_plan_respects_capacity_and_skips_unplaceable_jobs() -> None:
    m1 = miner("m1", free=1)
    m2 = miner("m2", gpus=(GpuInfo("a100-80gb", 80, 1),), free=1)
    jobs = [
        job("big", priority="high", created_ms=1, min_vram_gb=80),
        job("huge", priority="high", created_ms=2, min_vram_gb=200),  # nobody: no blocking
        job("small1", created_ms=3),
        job("small2", created_ms=4),
    ]
    assert plan(jobs, [m1, m2]) == [("big", "m2"), ("small1", "m1")]
    assert plan(jobs, [miner("m1", free=0)]) == []


def test_cheapest_then_least_loaded() -> None:
    cheap = miner("m_cheap", models=(ModelOffer("gpt2", "text-generation", "token", 5),))
    dear = miner("m_dear", models=(ModelOffer("gpt2", "text-generation", "token", 50),), free=4)
    assert plan([job()], [dear, cheap]) == [("job_a", "m_cheap")]
    a, b = miner("m_a", free=1), miner("m_b", free=3)
    assert plan([job()], [a, b]) == [("job_a", "m_b")]


def test_queue_reasons() -> None:
    assert "no miner is connected" in queue_reason(job(), [])
    assert queue_reason(job(), [miner("m1", models=())]) == "no connected miner serves model gpt2"
    two = [miner("m1"), miner("m2")]
    assert (
        queue_reason(job(min_vram_gb=80), two) == "2 miners serve gpt2 but none has ≥ 80 GiB VRAM"
    )
    assert (
        queue_reason(job(gpu_type="h100"), [miner("m1")])
        == "1 miner serves gpt2 but none has gpu_type h100"
    )
    assert "none has 2 GPUs" in queue_reason(job(gpu_count=2), two)
    reason = queue_reason(job(max_price_uait=10, estimated_units=100), two)
    assert "above max_price 0.000010" in reason and "0.002000" in reason
    busy = [miner(f"m{i}", free=0) for i in range(3)]
    assert queue_reason(job(), busy) == "all 3 matching miners are busy"
    assert queue_reason(job(), busy[:1]) == "the only matching miner is busy"
    assert "free slot" in queue_reason(job(), [miner("m1")])
    cpu_only = [miner("m1", gpus=(GpuInfo("cpu", 0, 1),))]
    assert queue_reason(job(min_vram_gb=8), cpu_only) == "1 miner serves gpt2 but none has a GPU"


def test_cost_uses_the_units_of_the_miners_unit() -> None:
    per_byte = miner("m_byte", models=(ModelOffer("gpt2", "text-generation", "byte", 1),))
    per_token = miner("m_token", models=(GPT2,))  # 20 uAIT per token
    # Submitted before any miner was seen: one unit in no unit, real units by unit.
    demand = job(estimated_units=1, units_by_unit={"token": 100, "byte": 400})
    assert demand.cost(GPT2) == 2_000 and demand.units_in("item") == 1
    assert eligible(per_token, job(max_price_uait=2_000, units_by_unit={"token": 100}))
    assert not eligible(per_token, job(max_price_uait=1_999, units_by_unit={"token": 100}))
    # The cheaper whole job wins, not the lower price per unit.
    assert plan([demand], [per_token, per_byte]) == [("job_a", "m_byte")]


def test_client_balance_bounds_a_top_up() -> None:
    m = miner("m1")  # 20 uAIT per token: 2,000 for 100 tokens
    units = {"token": 100}
    assert eligible(m, job(units_by_unit=units))  # balance not known: not limited
    assert eligible(m, job(units_by_unit=units, held_uait=500, available_uait=1_500))
    short = job(units_by_unit=units, held_uait=500, available_uait=1_499)
    assert not eligible(m, short) and plan([short], [m]) == []
    assert over_escrow(short, m.models) and not over_escrow(
        job(units_by_unit=units, held_uait=2_000), m.models
    )
    assert not over_escrow(job(units_by_unit=units, max_price_uait=1_000), m.models)  # too dear
    assert not over_escrow(job(model="llama", units_by_unit=units), m.models)  # another model
    assert queue_reason(short, [m]) == (
        "1 miner serves gpt2 but the cheapest would cost about 0.002000 AIT for this job, "
        "more than its escrow (0.000500 AIT) plus the client's available balance "
        "(0.001499 AIT); it waits for funds or a cheaper miner until its timeout"
    )
    # A cheaper miner it can fund takes it.
    cheap = miner("m2", models=(ModelOffer("gpt2", "text-generation", "token", 10),))
    assert plan([short], [m, cheap]) == [("job_a", "m2")]


def test_matching_is_pure() -> None:
    code = (
        "import sys, coordinator.domain.matching;"
        "bad = {'aiohttp','websockets','sqlalchemy','torch','asyncio'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
