"""Pure scheduler: which queued job goes to which connected miner, and why not.

Rules (docs/protocol.md, "Scheduling"):
- a miner is *eligible* for a job when it serves the job's model at a price whose
  estimated whole-job cost (price x the job's estimated units in the miner's unit) is
  within the job's ``max_price`` and, when the dispatcher knows the client's available
  balance, within what is held for the job plus that balance (a claim tops the escrow up
  to the cost; docs/pricing.md), and one of its GPU groups has the wanted ``gpu_type`` (or
  family: "a100" takes "a100-80gb"), at least ``min_vram_gb`` per device and at least
  ``gpu_count`` devices; a job without hardware requirements also runs on a CPU miner;
- jobs are served ``high`` before ``normal`` before ``low``, first in first out within a
  priority; a job that no free miner can take does not block the jobs behind it;
- among eligible miners with a free slot the cheapest wins, then the least loaded.

Nothing here awaits or touches storage. `plan_alike` plans over groups of miners that
look alike (the hub's shapes, coordinator/hub/shapes.py); `plan` is the same over
snapshots.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from protocol.frozen import direct_init
from protocol.messages import GpuInfo, ModelOffer, gpu_type_matches
from protocol.money import format_ait

PRIORITIES = ("high", "normal", "low")
PRIORITY_RANK: Mapping[str, int] = {name: rank for rank, name in enumerate(PRIORITIES)}


@direct_init
@dataclass(frozen=True)
class JobDemand:
    """What a queued job asks of a miner."""

    job_id: str
    model: str
    priority: str = "normal"
    created_ms: int = 0
    gpu_type: str | None = None  # normalised
    gpu_count: int = 1
    min_vram_gb: float = 0
    max_price_uait: int | None = None  # cap on the whole job's cost
    estimated_units: int = 1  # in the estimate's unit; the fallback for other units
    units_by_unit: Mapping[str, int] = field(default_factory=dict)
    held_uait: int = 0  # in escrow for the job now
    available_uait: int | None = None  # the client's available balance; None: not known

    @property
    def wants_hardware(self) -> bool:
        return self.gpu_type is not None or self.min_vram_gb > 0 or self.gpu_count > 1

    def units_in(self, unit: str) -> int:
        return self.units_by_unit.get(unit, self.estimated_units)

    def cost(self, offer: ModelOffer) -> int:
        """The job's estimated whole cost at this offer's price, in uAIT."""
        return offer.price_uait_per_unit * self.units_in(offer.unit)


@direct_init
@dataclass(frozen=True)
class MinerSnapshot:
    """One connected miner as the scheduler sees it."""

    miner_id: str
    gpus: tuple[GpuInfo, ...]
    models: tuple[ModelOffer, ...]
    free_slots: int

    def offer(self, model: str) -> ModelOffer | None:
        return self._offers.get(model)

    # Cached: `plan` looks these up for every free miner of every model it plans.
    @cached_property
    def _offers(self) -> dict[str, ModelOffer]:
        offers: dict[str, ModelOffer] = {}
        for offer in self.models:
            offers.setdefault(offer.name, offer)
        return offers

    @cached_property
    def devices(self) -> tuple[tuple[str, int, int], ...]:
        """What hardware_fits reads of the GPU groups (not their utilisation)."""
        return tuple((g.gpu_type, g.vram_gb, g.count) for g in self.gpus)


def sort_jobs(jobs: Iterable[JobDemand]) -> list[JobDemand]:
    """Priority order: high, normal, low; oldest first within one priority."""
    return sorted(jobs, key=lambda j: (PRIORITY_RANK.get(j.priority, 1), j.created_ms, j.job_id))


def _gpu_fits(gpu: GpuInfo, job: JobDemand) -> bool:
    if job.gpu_type is not None and not gpu_type_matches(gpu.gpu_type, job.gpu_type):
        return False
    if not job.wants_hardware:
        return True
    if gpu.gpu_type == "cpu" and job.gpu_type != "cpu":
        return False
    return gpu.vram_gb >= job.min_vram_gb and gpu.count >= job.gpu_count


def hardware_fits(gpus: Sequence[GpuInfo], job: JobDemand) -> bool:
    return any(_gpu_fits(gpu, job) for gpu in gpus)


def price_fits(offer: ModelOffer, job: JobDemand) -> bool:
    limit = job.max_price_uait
    return limit is None or job.cost(offer) <= limit


def funded(offer: ModelOffer, job: JobDemand) -> bool:
    """The escrow, topped up from the client's available balance, covers this offer (always
    true when the balance is not known)."""
    if job.available_uait is None:
        return True
    return job.cost(offer) <= job.held_uait + job.available_uait


def over_escrow(job: JobDemand, offers: Iterable[ModelOffer]) -> bool:
    """Some offer for the job's model would cost it more than its escrow (its claim needs a
    top-up): the dispatcher then needs the client's available balance to plan it. `offers`
    are the free miners'; each distinct offer need be named once."""
    for offer in offers:
        if offer.name == job.model and price_fits(offer, job) and job.cost(offer) > job.held_uait:
            return True
    return False


def eligible(miner: MinerSnapshot, job: JobDemand) -> bool:
    """The miner could run the job now or once it has a free slot."""
    offer = miner.offer(job.model)
    return (
        offer is not None
        and price_fits(offer, job)
        and funded(offer, job)
        and hardware_fits(miner.gpus, job)
    )


def _offer(miner: MinerSnapshot, job: JobDemand) -> ModelOffer:
    offer = miner.offer(job.model)
    assert offer is not None, "only called for miners that serve the model"
    return offer


def _cost(miner: MinerSnapshot, job: JobDemand) -> int:
    return job.cost(_offer(miner, job))


class Alike(Protocol):
    """Miners a job of one model cannot tell apart: the same devices and the same offer,
    so the same eligibility and cost. Among them the best has the most free slots, then
    the lowest id."""

    @property
    def gpus(self) -> tuple[GpuInfo, ...]: ...

    @property
    def offer(self) -> ModelOffer: ...

    def best(self) -> tuple[int, str] | None:
        """(-free slots, miner id) of the best with a slot left; None when none has one."""

    def take(self) -> None:
        """Give one slot of the best to the job just planned."""


def plan_alike(
    jobs: Iterable[JobDemand], alike: Callable[[str], Iterable[Alike]], slots: int
) -> list[tuple[str, str]]:
    """(job_id, miner_id) pairs to claim, in priority order, within every free slot: each
    job takes, among the miners eligible for it with a slot left, the cheapest, then the
    one with the most free slots, then the lowest id. `alike(model)` gives the groups of
    miners that serve the model, so a plan costs jobs x groups, not jobs x miners: with
    1,000 free miners, 25 jobs took 40 ms on the event loop miner by miner and 500 jobs
    0.85 s (docs/benchmarks.md, round 16). `slots` bounds the free slots of all groups
    together: the plan stops when they are spent."""
    pairs: list[tuple[str, str]] = []
    for job in sort_jobs(jobs):
        if slots <= 0:
            break
        best: tuple[int, int, str] | None = None
        chosen: Alike | None = None
        for group in alike(job.model):
            top = group.best()
            if top is None or not _takes(group, job):
                continue
            rank = (job.cost(group.offer), *top)
            if best is None or rank < best:
                best, chosen = rank, group
        if best is not None and chosen is not None:
            chosen.take()
            slots -= 1
            pairs.append((job.job_id, best[2]))
    return pairs


def _takes(group: Alike, job: JobDemand) -> bool:
    """`eligible` for every miner of the group."""
    return (
        price_fits(group.offer, job) and funded(group.offer, job) and hardware_fits(group.gpus, job)
    )


@dataclass
class _Group:
    """Snapshots that look alike to one model, for `plan`."""

    gpus: tuple[GpuInfo, ...]
    offer: ModelOffer
    slots: dict[str, int]  # the plan's: free slots left per miner, shared by its groups
    heap: list[tuple[int, str]]  # (-free slots when pushed, miner id): the best on top

    def best(self) -> tuple[int, str] | None:
        # A miner that serves several models sits in a group of each, and a slot taken
        # through one leaves its entry in the others overstated (slots only go down within
        # a plan): such an entry is pushed again as it is now.
        heap = self.heap
        while heap:
            top = heap[0]
            left = self.slots[top[1]]
            if -top[0] == left:
                return top
            heapq.heappop(heap)
            if left > 0:
                heapq.heappush(heap, (-left, top[1]))
        return None

    def take(self) -> None:
        _, miner_id = heapq.heappop(self.heap)
        left = self.slots[miner_id] = self.slots[miner_id] - 1
        if left > 0:
            heapq.heappush(self.heap, (-left, miner_id))


def plan(jobs: Iterable[JobDemand], miners: Iterable[MinerSnapshot]) -> list[tuple[str, str]]:
    """`plan_alike` over snapshots: the pairs to claim within their free slots."""
    pool = [m for m in miners if m.free_slots > 0]
    slots = {m.miner_id: m.free_slots for m in pool}
    by_model: dict[str, list[_Group]] = {}

    def alike(model: str) -> list[_Group]:
        groups = by_model.get(model)
        if groups is None:
            keyed: dict[tuple[tuple[tuple[str, int, int], ...], ModelOffer], _Group] = {}
            for miner in pool:
                offer = miner.offer(model)
                if offer is not None:
                    key = (miner.devices, offer)
                    group = keyed.get(key)
                    if group is None:
                        group = keyed[key] = _Group(miner.gpus, offer, slots, [])
                    group.heap.append((-miner.free_slots, miner.miner_id))
            for group in keyed.values():
                heapq.heapify(group.heap)
            groups = by_model[model] = list(keyed.values())
        return groups

    return plan_alike(jobs, alike, sum(slots.values()))


def _miners(n: int) -> str:
    return f"{n} miner" if n == 1 else f"{n} miners"


def _serve(n: int) -> str:
    return f"{_miners(n)} serves" if n == 1 else f"{_miners(n)} serve"


def queue_reason(job: JobDemand, miners: Iterable[MinerSnapshot]) -> str:
    """One sentence: why this queued job is not running yet (the first unmet condition)."""
    return queue_reason_counted(job, ((m, 1) for m in miners))


def queue_reason_counted(job: JobDemand, groups: Iterable[tuple[MinerSnapshot, int]]) -> str:
    """`queue_reason` over groups of miners that look alike: (one of them, standing for
    all, with a free slot when any has one; how many they are)."""
    pool = list(groups)
    if not pool:
        return f"no miner is connected; waiting for one that serves model {job.model}"
    serving = [(m, n) for m, n in pool if m.offer(job.model) is not None]
    if not serving:
        return f"no connected miner serves model {job.model}"
    head = f"{_serve(_count(serving))} {job.model} but"
    hw = [(m, n) for m, n in serving if hardware_fits(m.gpus, job)]
    if not hw:
        return f"{head} {_hardware_gap([m for m, _ in serving], job)}"
    priced = [(m, n) for m, n in hw if price_fits(_offer(m, job), job)]
    if not priced:
        cheapest = min(_cost(m, job) for m, _ in hw)
        limit = job.max_price_uait or 0
        return (
            f"{head} the cheapest would cost about {format_ait(cheapest)} AIT for this job, "
            f"above max_price {format_ait(limit)}"
        )
    affordable = [(m, n) for m, n in priced if funded(_offer(m, job), job)]
    if not affordable:
        cheapest = min(_cost(m, job) for m, _ in priced)
        return (
            f"{head} the cheapest would cost about {format_ait(cheapest)} AIT for this job, "
            f"more than its escrow ({format_ait(job.held_uait)} AIT) plus the client's "
            f"available balance ({format_ait(job.available_uait or 0)} AIT); it waits for "
            "funds or a cheaper miner until its timeout"
        )
    if not any(m.free_slots > 0 for m, _ in affordable):
        n = _count(affordable)
        return "the only matching miner is busy" if n == 1 else f"all {n} matching miners are busy"
    return "a matching miner has a free slot; jobs ahead of it in the queue go first"


def _count(groups: Iterable[tuple[MinerSnapshot, int]]) -> int:
    return sum(n for _, n in groups)


def _hardware_gap(serving: Sequence[MinerSnapshot], job: JobDemand) -> str:
    """Name the first hardware requirement none of the serving miners meets."""
    gpus = [g for m in serving for g in m.gpus if g.gpu_type != "cpu" or job.gpu_type == "cpu"]
    if job.gpu_type is not None:
        gpus = [g for g in gpus if gpu_type_matches(g.gpu_type, job.gpu_type)]
        if not gpus:
            return f"none has gpu_type {job.gpu_type}"
    elif not gpus:
        return "none has a GPU"
    if job.min_vram_gb > 0 and not any(g.vram_gb >= job.min_vram_gb for g in gpus):
        return f"none has ≥ {job.min_vram_gb:g} GiB VRAM"
    if not any(g.count >= job.gpu_count for g in gpus):
        return f"none has {job.gpu_count} GPUs of the wanted type"
    what = f"{job.gpu_count}× {job.gpu_type or 'GPU'} with ≥ {job.min_vram_gb:g} GiB VRAM"
    return f"none has {what} on one host"
