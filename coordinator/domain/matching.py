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

Nothing here awaits or touches storage; the hub feeds it snapshots.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from protocol.messages import GpuInfo, ModelOffer, gpu_type_matches
from protocol.money import format_ait

PRIORITIES = ("high", "normal", "low")
PRIORITY_RANK: Mapping[str, int] = {name: rank for rank, name in enumerate(PRIORITIES)}


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


@dataclass(frozen=True)
class MinerSnapshot:
    """One connected miner as the scheduler sees it."""

    miner_id: str
    gpus: tuple[GpuInfo, ...]
    models: tuple[ModelOffer, ...]
    free_slots: int

    def offer(self, model: str) -> ModelOffer | None:
        return self._offers.get(model)

    # Cached: a connection keeps its snapshot while its free slots stay the same
    # (`MinerConn.snapshot`), and every plan looks these up for every free miner.
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
    are the free miners' (`offers_by_model`); each distinct offer need be named once."""
    for offer in offers:
        if offer.name == job.model and price_fits(offer, job) and job.cost(offer) > job.held_uait:
            return True
    return False


def offers_by_model(miners: Iterable[MinerSnapshot]) -> dict[str, set[ModelOffer]]:
    """The distinct offers of these miners, by model: many miners quote the same."""
    offers: dict[str, set[ModelOffer]] = {}
    for miner in miners:
        for offer in miner.models:
            offers.setdefault(offer.name, set()).add(offer)
    return offers


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


@dataclass
class _Group:
    """Free miners that look alike to a job of one model: the same devices and the same
    offer, so the same eligibility and cost. Among them the rank is free slots, then id."""

    gpus: tuple[GpuInfo, ...]
    offer: ModelOffer
    heap: list[tuple[int, str]]  # (-free slots when pushed, miner id): the best on top


def _groups(pool: Sequence[MinerSnapshot], model: str) -> list[_Group]:
    groups: dict[tuple[tuple[tuple[str, int, int], ...], ModelOffer], _Group] = {}
    for miner in pool:
        offer = miner.offer(model)
        if offer is None:
            continue
        key = (miner.devices, offer)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(miner.gpus, offer, [])
        group.heap.append((-miner.free_slots, miner.miner_id))
    for group in groups.values():
        heapq.heapify(group.heap)
    return list(groups.values())


def _top(group: _Group, slots: Mapping[str, int]) -> tuple[int, str] | None:
    """The group's best miner with a slot left. A miner that serves several models sits
    in a group of each, and a slot taken through one leaves its entry in the others
    overstated (slots only go down within a plan): such an entry is pushed again as is."""
    heap = group.heap
    while heap:
        top = heap[0]
        left = slots[top[1]]
        if -top[0] == left:
            return top
        heapq.heappop(heap)
        if left > 0:
            heapq.heappush(heap, (-left, top[1]))
    return None


def plan(jobs: Iterable[JobDemand], miners: Iterable[MinerSnapshot]) -> list[tuple[str, str]]:
    """(job_id, miner_id) pairs to claim, in priority order, within every free slot.

    Each job takes, among the miners eligible for it with a slot left, the cheapest, then
    the one with the most free slots, then the lowest id. Miners are compared in groups
    that look alike (`_Group`), so a plan costs jobs x groups rather than jobs x miners:
    with 1,000 free miners, planning 25 jobs took 40 ms on the event loop miner by miner,
    and 500 jobs 0.85 s (docs/benchmarks.md, round 16).
    """
    pool = [m for m in miners if m.free_slots > 0]
    slots = {m.miner_id: m.free_slots for m in pool}
    left = sum(slots.values())
    by_model: dict[str, list[_Group]] = {}
    pairs: list[tuple[str, str]] = []
    for job in sort_jobs(jobs):
        if left <= 0:
            break
        groups = by_model.get(job.model)
        if groups is None:
            groups = by_model[job.model] = _groups(pool, job.model)
        best: tuple[int, int, str] | None = None
        chosen: _Group | None = None
        for group in groups:
            top = _top(group, slots)
            if top is None or not _takes(group, job):
                continue
            rank = (job.cost(group.offer), *top)
            if best is None or rank < best:
                best, chosen = rank, group
        if best is None or chosen is None:
            continue
        miner_id = best[2]
        heapq.heappop(chosen.heap)
        slots[miner_id] -= 1
        left -= 1
        if slots[miner_id] > 0:
            heapq.heappush(chosen.heap, (-slots[miner_id], miner_id))
        pairs.append((job.job_id, miner_id))
    return pairs


def _takes(group: _Group, job: JobDemand) -> bool:
    """`eligible` for every miner of the group."""
    return (
        price_fits(group.offer, job) and funded(group.offer, job) and hardware_fits(group.gpus, job)
    )


def _miners(n: int) -> str:
    return f"{n} miner" if n == 1 else f"{n} miners"


def _serve(n: int) -> str:
    return f"{_miners(n)} serves" if n == 1 else f"{_miners(n)} serve"


def queue_reason(job: JobDemand, miners: Iterable[MinerSnapshot]) -> str:
    """One sentence: why this queued job is not running yet (the first unmet condition)."""
    pool = list(miners)
    if not pool:
        return f"no miner is connected; waiting for one that serves model {job.model}"
    serving = [m for m in pool if m.offer(job.model) is not None]
    if not serving:
        return f"no connected miner serves model {job.model}"
    head = f"{_serve(len(serving))} {job.model} but"
    hw = [m for m in serving if hardware_fits(m.gpus, job)]
    if not hw:
        return f"{head} {_hardware_gap(serving, job)}"
    priced = [m for m in hw if price_fits(_offer(m, job), job)]
    if not priced:
        cheapest = min(_cost(m, job) for m in hw)
        limit = job.max_price_uait or 0
        return (
            f"{head} the cheapest would cost about {format_ait(cheapest)} AIT for this job, "
            f"above max_price {format_ait(limit)}"
        )
    affordable = [m for m in priced if funded(_offer(m, job), job)]
    if not affordable:
        cheapest = min(_cost(m, job) for m in priced)
        return (
            f"{head} the cheapest would cost about {format_ait(cheapest)} AIT for this job, "
            f"more than its escrow ({format_ait(job.held_uait)} AIT) plus the client's "
            f"available balance ({format_ait(job.available_uait or 0)} AIT); it waits for "
            "funds or a cheaper miner until its timeout"
        )
    free = [m for m in affordable if m.free_slots > 0]
    if not free:
        n = len(affordable)
        return "the only matching miner is busy" if n == 1 else f"all {n} matching miners are busy"
    return "a matching miner has a free slot; jobs ahead of it in the queue go first"


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
