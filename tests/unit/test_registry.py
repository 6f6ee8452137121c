"""coordinator.hub.registry: what the REST side and the planners read of the miners
connected to this process, with thousands of them."""

from __future__ import annotations

import dataclasses

import pytest
from ait_harness import sample_job

from coordinator.domain.jobs import Job, Requirements
from coordinator.domain.matching import JobDemand
from coordinator.hub.registry import MAX_REMEMBERED, MinerConn, MinerRegistry
from protocol.messages import Advert, GpuInfo, Message, ModelOffer


async def _sent(_message: Message) -> bool:
    return True  # no socket: these tests read the registry, they send nothing


async def _closed(_code: int, _reason: str) -> None:
    return None


def conn(miner_id: str, *offers: tuple[str, int]) -> MinerConn:
    models = tuple(ModelOffer(name, "echo", "byte", price) for name, price in offers)
    advert = Advert((GpuInfo("cpu", 0, 1),), models, 2, "test")
    made = MinerConn(miner_id, "pk", f"addr-{miner_id}", "key-1", advert, _sent, _closed)
    made.resumed = True
    return made


def job(model: str) -> Job:
    return dataclasses.replace(sample_job(), model=model, requirements=Requirements())


def test_a_connected_miner_is_never_forgotten_however_many_connect_after_it() -> None:
    registry = MinerRegistry()
    registry.add(conn("m-rare", ("rare", 7)))
    for i in range(MAX_REMEMBERED + 5):
        registry.add(conn(f"m{i:05d}", ("echo", 1)))
    assert [(o.miner_id, o.price_uait_per_unit) for o in registry.offers("rare")] == [("m-rare", 7)]
    assert registry.never_matches_reason(job("rare")) is None
    assert registry.never_matches_reason(job("other")) == "no connected miner serves model other"
    on_gpu = dataclasses.replace(job("echo"), requirements=Requirements(gpu_type="a100"))
    assert registry.never_matches_reason(on_gpu) == (
        f"{MAX_REMEMBERED + 5} miners serve echo but none has gpu_type a100"
    )


def test_offers_name_each_price_once_and_follow_miners_coming_and_going() -> None:
    registry = MinerRegistry()
    a, b, c = conn("a", ("echo", 5)), conn("b", ("echo", 5)), conn("c", ("echo", 9), ("x", 1))
    for each in (a, b, c):
        registry.add(each)
    assert [(o.miner_id, o.price_uait_per_unit) for o in registry.offers("echo")] == [
        ("a", 5),
        ("c", 9),
    ]
    registry.add(conn("d", ("echo", 7)))
    assert [o.price_uait_per_unit for o in registry.offers("echo")] == [5, 9, 7]
    # A miner that went away is remembered for its prices, as before it connected again.
    registry.remove(c)
    assert [(o.price_uait_per_unit, o.connected) for o in registry.offers("x")] == [(1, False)]
    registry.add(conn("c", ("x", 2)))  # back, with another price
    assert [(o.price_uait_per_unit, o.connected) for o in registry.offers("x")] == [(2, True)]


def test_remembered_miners_are_bounded_and_the_oldest_go_first() -> None:
    registry = MinerRegistry()
    for i in range(MAX_REMEMBERED + 1):
        registry.remember(f"away{i:05d}", conn("x", ("echo", i)).advert)
    prices = [o.price_uait_per_unit for o in registry.offers("echo")]
    assert len(prices) == MAX_REMEMBERED and prices[0] == 1


def test_the_index_of_free_miners_follows_every_change_of_their_slots() -> None:
    registry = MinerRegistry()
    a, b = conn("a", ("echo", 1)), conn("b", ("echo", 1))
    registry.add(a)
    registry.add(b)
    assert registry.free_slots() == 4
    a.running.add("job_1")
    b.reserved += 2
    assert registry.free_slots() == 1
    demand = [JobDemand("j1", "echo"), JobDemand("j2", "echo")]
    assert registry.plan(demand) == [("j1", a)]  # the only free slot, now reserved
    assert a.reserved == 1 and registry.free_slots() == 0
    a.reserved -= 1
    a.running.discard("job_1")
    b.reserved = 0
    assert registry.free_slots() == 4
    assert registry.plan(demand) == [("j1", a), ("j2", b)]
    b.draining = True  # reserved slots and draining alike
    assert registry.free_slots() == 1
    registry.remove(a)
    assert registry.free_slots() == 0 and registry.plan(demand) == []


def test_a_busy_miners_heap_stays_bounded_however_many_jobs_it_runs() -> None:
    registry = MinerRegistry()
    miner = conn("m", ("echo", 1))
    registry.add(miner)
    for i in range(10_000):
        miner.running.add(f"job_{i}")  # each job that ends pushes an entry
        miner.running.discard(f"job_{i}")
    assert miner.shape is not None and miner.shape.entries() <= 2 * 1 + 64 + 1
    assert registry.plan([JobDemand("j1", "echo")]) == [("j1", miner)]


def test_a_miner_whose_socket_fell_behind_is_planned_again_once_it_keeps_up() -> None:
    keeping_up = {"m": False}
    miner = conn("m", ("echo", 1))
    miner.writable = lambda: keeping_up["m"]
    registry = MinerRegistry()
    registry.add(miner)
    demand = [JobDemand("j1", "echo")]
    assert registry.plan(demand) == []  # left out while its frames pile up unread
    keeping_up["m"] = True
    assert registry.plan(demand) == [("j1", miner)]


class _Unpriceable(dict[str, int]):
    def get(self, *_args: object, **_kwargs: object) -> int:
        raise RuntimeError("a demand the plan cannot price")


def test_a_plan_that_fails_midway_gives_back_the_slots_it_took() -> None:
    registry = MinerRegistry()
    miner = conn("m", ("echo", 1))
    registry.add(miner)
    jobs = [
        JobDemand("j1", "echo", created_ms=1),
        JobDemand("j2", "echo", created_ms=2, units_by_unit=_Unpriceable()),
    ]
    with pytest.raises(RuntimeError):
        registry.plan(jobs)
    assert miner.reserved == 0 and registry.free_slots() == 2
    assert registry.plan(jobs[:1]) == [("j1", miner)]


def test_the_miners_view_pages_by_id_and_filters_by_model() -> None:
    registry = MinerRegistry()
    for i in (3, 1, 4, 0, 2):
        offers = [("echo", 1)] if i % 2 else [("echo", 1), ("gpt2", 5)]
        registry.add(conn(f"m{i}", *offers))

    def ids(items: list[dict[str, object]]) -> list[object]:
        return [m["miner_id"] for m in items]

    assert ids(registry.miners_view()) == ["m0", "m1", "m2", "m3", "m4"]
    assert ids(registry.miners_view(offset=1, limit=2)) == ["m1", "m2"]
    assert ids(registry.miners_view("gpt2", offset=1)) == ["m2", "m4"]
    assert registry.miners_view("nobody") == []
    assert registry.connected_count() == 5
    # What changes while a miner is connected is read from it each time.
    busy = registry.get("m1")
    assert busy is not None
    busy.running.add("j1")
    busy.running.add("j2")
    [item] = registry.miners_view(offset=1, limit=1)
    assert item["status"] == "busy" and item["running_jobs"] == 2
    assert item["models"] == [
        {
            "name": "echo",
            "runtime": "echo",
            "unit": "byte",
            "price": 1e-06,
            "price_uait_per_unit": 1,
        }
    ]


def test_a_connection_keeps_the_job_it_leased_only_while_the_job_runs_there() -> None:
    miner = conn("m", ("echo", 1))
    leased = dataclasses.replace(job("echo"), job_id="job_a")
    miner.running.add_lease(leased)
    miner.running.add("job_b")  # resumed after a reconnect: running, not leased here
    assert miner.free_slots == 0
    assert miner.running.lease_of("job_a") is leased
    assert miner.running.lease_of("job_b") is None
    miner.running.discard("job_a")
    assert miner.running.lease_of("job_a") is None and miner.free_slots == 1
    miner.running.add_lease(leased)
    miner.running.clear()
    assert miner.running.lease_of("job_a") is None and miner.free_slots == 2
