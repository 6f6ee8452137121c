"""The connected miners grouped by what the scheduler sees of them, free ones in order.

A *shape* is the miners with the same devices (type, VRAM and count; not utilisation)
and the same offers: to a job they differ only in their free slots and their ids. Each
shape keeps its members in a heap by free slots, then id, so a plan costs what the
shapes number, not what the miners do: with 10,000 miners connected, reading every one
for each submit and each dispatcher round held the event loop for 10-20 ms a time even
after the plan itself went by groups (docs/benchmarks.md, round 16).

The heap is lazy. Its entries are (-free slots when pushed, miner id), and each member
with a free slot has one *live* entry, at least as high as what it has now: when its
free slots rise above it (`MinerConn` reports every change) a new live entry supersedes
it. A superseded entry is dropped when it surfaces; a live one found overstating its
miner (a slot taken since) is pushed again as the miner is now. One live entry a member
keeps a taken slot to one pop and one push (with every entry re-pushed, duplicates of a
busy miner multiplied, and `top` was 2.5% of the coordinator with two miners).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from coordinator.domain.matching import JobDemand, MinerSnapshot, plan_alike
from protocol.messages import Advert, GpuInfo, ModelOffer

if TYPE_CHECKING:
    from coordinator.hub.registry import MinerConn

ShapeKey = tuple[tuple[tuple[str, int, int], ...], tuple[ModelOffer, ...]]


def shape_key(gpus: tuple[GpuInfo, ...], models: tuple[ModelOffer, ...]) -> ShapeKey:
    return tuple((g.gpu_type, g.vram_gb, g.count) for g in gpus), models


class Shape:
    def __init__(self, index: ShapeIndex, advert: Advert):
        self.index = index
        # The first member's; the others differ at most in utilisation and version.
        self.advert = advert
        self.gpus = advert.gpus
        self.models = advert.models
        self.members: dict[str, MinerConn] = {}
        self.free_slots = 0  # over its members; kept by their reports
        self._heap: list[tuple[int, str]] = []
        # miner id -> the free slots of its live entry, its one entry `top` believes; any
        # other entry of it in the heap is superseded and dropped when it surfaces.
        self._live: dict[str, int] = {}

    def join(self, conn: MinerConn) -> None:
        self.members[conn.miner_id] = conn
        self.free_slots += conn.free_slots
        self.push(conn)

    def leave(self, conn: MinerConn) -> None:
        del self.members[conn.miner_id]
        self.free_slots -= conn.free_slots
        self._live.pop(conn.miner_id, None)

    def push(self, conn: MinerConn) -> None:
        """The connection's free slots rose (or it joined): above its live entry, it gets
        a new one."""
        free = conn.free_slots
        if free > self._live.get(conn.miner_id, 0):
            self._live[conn.miner_id] = free
            heapq.heappush(self._heap, (-free, conn.miner_id))
            if len(self._heap) > 2 * len(self.members) + 64:
                self._rebuild()  # superseded entries sink and stay: drop them now and then

    def entries(self) -> int:
        """How many heap entries it holds (a bound the tests keep)."""
        return len(self._heap)

    def _rebuild(self) -> None:
        self._live = {m: c.free_slots for m, c in self.members.items() if c.free_slots > 0}
        self._heap = [(-free, m) for m, free in self._live.items()]
        heapq.heapify(self._heap)

    def top(self) -> MinerConn | None:
        """The member with the most free slots, then the lowest id; None when none has one."""
        heap, live = self._heap, self._live
        while heap:
            believed, miner_id = heap[0]
            if live.get(miner_id) != -believed:
                heapq.heappop(heap)  # superseded
                continue
            conn = self.members[miner_id]
            free = conn.free_slots
            if free == -believed:
                return conn
            # Overstated: a slot was taken since (a rise would have superseded it).
            heapq.heappop(heap)
            if free > 0:
                live[miner_id] = free
                heapq.heappush(heap, (-free, miner_id))
            else:
                del live[miner_id]
        return None

    def set_aside(self) -> MinerConn:
        """Take the top member out of the heap (until `push`)."""
        _, miner_id = heapq.heappop(self._heap)
        del self._live[miner_id]
        return self.members[miner_id]

    def stands_for(self) -> MinerSnapshot:
        """One snapshot for all the members: a free slot when any has one."""
        return MinerSnapshot("", self.gpus, self.models, 1 if self.top() is not None else 0)


class ShapeIndex:
    def __init__(self) -> None:
        self._shapes: dict[ShapeKey, Shape] = {}
        self._serving: dict[str, list[Shape]] = {}  # model -> the shapes that offer it
        self.free_slots = 0  # over every member; kept by the members' reports

    def add(self, conn: MinerConn) -> None:
        key = shape_key(conn.advert.gpus, conn.advert.models)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = Shape(self, conn.advert)
            for offer in shape.models:
                self._serving.setdefault(offer.name, []).append(shape)
        conn.shape = shape
        self.free_slots += conn.free_slots
        shape.join(conn)

    def remove(self, conn: MinerConn) -> None:
        shape = conn.shape
        if shape is None:
            return
        conn.shape = None
        shape.leave(conn)
        self.free_slots -= conn.free_slots
        if not shape.members:
            del self._shapes[shape_key(shape.gpus, shape.models)]
            for offer in shape.models:
                serving = self._serving[offer.name]
                serving.remove(shape)
                if not serving:
                    del self._serving[offer.name]

    def shapes(self) -> Iterable[Shape]:
        return self._shapes.values()

    def serving(self) -> Mapping[str, Sequence[Shape]]:
        """The shapes that offer each model, by model."""
        return self._serving

    def free_offers(self) -> dict[str, set[ModelOffer]]:
        """The offers of the shapes with a free slot, by model."""
        offers: dict[str, set[ModelOffer]] = {}
        for shape in self._shapes.values():
            if shape.top() is not None:
                for offer in shape.models:
                    offers.setdefault(offer.name, set()).add(offer)
        return offers

    def plan(self, jobs: Sequence[JobDemand]) -> list[tuple[str, MinerConn]]:
        """`plan_alike` over the free members: (job id, connection) pairs, each slot
        reserved on its connection (`MinerConn.reserved`) at once; the caller gives back
        those it does not claim. A member whose socket is not keeping up is left out, as
        the dispatcher always did."""
        aside: list[tuple[Shape, MinerConn]] = []
        best: dict[Shape, MinerConn | None] = {}  # each shape's best until a slot is taken
        taken: list[MinerConn] = []
        groups: dict[str, list[_Planned]] = {}

        def alike(model: str) -> list[_Planned]:
            found = groups.get(model)
            if found is None:
                found = groups[model] = []
                for shape in self._serving.get(model, ()):
                    offer = shape.advert.offer(model)
                    if offer is not None:
                        found.append(_Planned(shape, offer, best, aside, taken))
            return found

        try:
            pairs = plan_alike(jobs, alike, self.free_slots)
        except BaseException:
            for conn in taken:  # nobody will claim or give back a plan that failed
                conn.reserved -= 1
            raise
        finally:
            for shape, conn in aside:
                if conn.shape is shape:
                    shape.push(conn)
        # One take a pair, in order: the connections are those the ids name.
        return [(job_id, conn) for (job_id, _), conn in zip(pairs, taken, strict=True)]


class _Planned:
    """One shape as one plan sees it for one model. Nothing else changes the miners while
    a plan runs, so a shape's best stays its best until this plan takes one of its slots."""

    def __init__(
        self,
        shape: Shape,
        offer: ModelOffer,
        best: dict[Shape, MinerConn | None],
        aside: list[tuple[Shape, MinerConn]],
        taken: list[MinerConn],
    ):
        self.shape = shape
        self.gpus = shape.gpus
        self.offer = offer
        self._best = best
        self._aside = aside
        self._taken = taken

    def _conn(self) -> MinerConn | None:
        shape = self.shape
        if shape in self._best:
            return self._best[shape]
        while (conn := shape.top()) is not None and not conn.writable():
            self._aside.append((shape, shape.set_aside()))  # its socket is not keeping up
        self._best[shape] = conn
        return conn

    def best(self) -> tuple[int, str] | None:
        conn = self._conn()
        return None if conn is None else (-conn.free_slots, conn.miner_id)

    def take(self) -> None:
        conn = self._conn()
        assert conn is not None, "take() follows a best() that found a member"
        conn.reserved += 1
        self._taken.append(conn)
        del self._best[self.shape]
