"""The registry's index of free miners (coordinator/hub/shapes.py) against the miners
themselves: after any run of connects, disconnects, jobs starting and ending, slots
reserved and given back, drains, resumes and sockets falling behind, it counts the same
free slots and plans the same pairs as the pure scheduler over every connection's own
state, and reserves what it plans."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.domain.matching import JobDemand, MinerSnapshot, plan
from coordinator.hub.registry import MinerConn, MinerRegistry
from protocol.messages import Advert, GpuInfo, Message, ModelOffer


async def _sent(_message: Message) -> bool:
    return True  # no socket: nothing is sent here


async def _closed(_code: int, _reason: str) -> None:
    return None


ECHO = ModelOffer("echo", "echo", "byte", 1)
ECHO_DEAR = ModelOffer("echo", "echo", "byte", 3)
GPT2 = ModelOffer("gpt2", "text-generation", "token", 2)
ADVERTS = [
    Advert((GpuInfo("cpu", 0, 1),), (ECHO,), 2, "t"),
    Advert((GpuInfo("cpu", 0, 1, utilisation=90),), (ECHO,), 3, "t"),  # same shape, busier
    Advert((GpuInfo("v100", 16, 1),), (ECHO_DEAR, GPT2), 2, "t"),
    Advert((GpuInfo("a100-80gb", 80, 2),), (GPT2,), 4, "t"),
]
MINERS = ["m0", "m1", "m2", "m3"]
MODEL_FIELDS = (
    "model", "miners_online", "free_slots", "price_min_uait_per_unit", "price_max_uait_per_unit",
)  # fmt: skip
PROBE = [
    JobDemand(f"p{i}", model, created_ms=i) for i, model in enumerate(["echo"] * 4 + ["gpt2"] * 3)
]


class Socket:
    def __init__(self) -> None:
        self.keeping_up = True

    def writable(self) -> bool:
        return self.keeping_up


op = st.one_of(
    st.tuples(
        st.just("connect"),
        st.sampled_from(MINERS),
        st.integers(0, len(ADVERTS) - 1),
        st.booleans(),  # resumed at once (as after its resume message)
    ),
    st.tuples(st.just("disconnect"), st.sampled_from(MINERS)),
    st.tuples(st.just("start"), st.sampled_from(MINERS), st.integers(0, 5)),
    st.tuples(st.just("end"), st.sampled_from(MINERS), st.integers(0, 5)),
    st.tuples(st.just("reserve"), st.sampled_from(MINERS), st.integers(-1, 1)),
    st.tuples(st.just("drain"), st.sampled_from(MINERS), st.booleans()),
    st.tuples(st.just("resume"), st.sampled_from(MINERS)),
    st.tuples(st.just("socket"), st.sampled_from(MINERS), st.booleans()),
    st.tuples(st.just("plan"), st.lists(st.sampled_from(["echo", "gpt2"]), max_size=8)),
    st.tuples(st.just("plan"), st.lists(st.sampled_from(["echo", "gpt2"]), max_size=8)),
)


def ids(pairs: list[tuple[str, MinerConn]]) -> list[tuple[str, str]]:
    return [(job_id, conn.miner_id) for job_id, conn in pairs]


def models_by_hand(conns: dict[str, MinerConn]) -> list[dict[str, object]]:
    """`GET /v1/models` read off every connection, as it was before shapes kept it."""
    by_model: dict[str, list[tuple[MinerConn, ModelOffer]]] = {}
    for c in conns.values():
        for offer in c.advert.models:
            by_model.setdefault(offer.name, []).append((c, offer))
    return [
        {
            "model": name,
            "miners_online": len(rows),
            "free_slots": sum(c.free_slots for c, _ in rows),
            "price_min_uait_per_unit": min(o.price_uait_per_unit for _, o in rows),
            "price_max_uait_per_unit": max(o.price_uait_per_unit for _, o in rows),
        }
        for name, rows in sorted(by_model.items())
    ]


def by_hand(conns: dict[str, MinerConn]) -> list[MinerSnapshot]:
    return [
        MinerSnapshot(c.miner_id, c.advert.gpus, c.advert.models, c.free_slots)
        for c in conns.values()
        if c.writable()
    ]


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.integers(0, len(ADVERTS) - 1), min_size=len(MINERS), max_size=len(MINERS)),
    st.lists(op, max_size=80),
)
def test_the_index_plans_as_the_scheduler_over_every_connection(
    first: list[int], ops: list[Any]
) -> None:
    registry = MinerRegistry()
    conns: dict[str, MinerConn] = {}
    sockets: dict[str, Socket] = {}
    connected = [("connect", m, advert, True) for m, advert in zip(MINERS, first, strict=True)]
    for step in connected + ops:
        kind, *args = step
        if kind == "connect":
            miner_id, advert = args[0], ADVERTS[args[1]]
            sockets[miner_id] = Socket()
            new = MinerConn(
                miner_id, "pk", "addr", "key", advert, _sent, _closed, sockets[miner_id].writable
            )
            if args[2]:
                new.resumed = True
            registry.add(new)  # replaces an earlier connection of the same miner
            conns[miner_id] = new
        elif kind == "plan":
            demands = [JobDemand(f"j{i}", model, created_ms=i) for i, model in enumerate(args[0])]
            expected = plan(demands, by_hand(conns))
            reserved = {m: c.reserved for m, c in conns.items()}
            assert ids(registry.plan(demands)) == expected
            taken = Counter(miner_id for _, miner_id in expected)
            assert {m: c.reserved - reserved[m] for m, c in conns.items()} == {
                m: taken[m] for m in conns
            }
        elif args[0] in conns:
            c = conns[args[0]]
            if kind == "disconnect":
                registry.remove(conns.pop(args[0]))
            elif kind == "start":
                c.running.add(f"job{args[1]}")
            elif kind == "end":
                c.running.discard(f"job{args[1]}")
            elif kind == "reserve":
                c.reserved = max(0, c.reserved + args[1])
            elif kind == "drain":
                c.draining = args[1]
            elif kind == "resume":
                c.resumed = True
            elif kind == "socket":
                sockets[args[0]].keeping_up = args[1]
        assert registry.free_slots() == sum(c.free_slots for c in conns.values())
        shown = [{k: m[k] for k in MODEL_FIELDS} for m in registry.models_view()]
        assert shown == models_by_hand(conns)
        # And a plan now, given back at once: what the dispatcher does with a plan it
        # drops for a longer scan.
        expected = plan(PROBE, by_hand(conns))
        pairs = registry.plan(PROBE)
        assert ids(pairs) == expected
        for _, planned in pairs:
            planned.reserved -= 1
    assert registry.free_slots() == sum(c.free_slots for c in conns.values())
