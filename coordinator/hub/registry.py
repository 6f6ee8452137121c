"""In-process registry of the miners connected to this coordinator process.

It holds each connection's advert, running jobs and a way to send it frames, answers the
REST side's questions (``queue_reason``, ``offers``, the ``/v1/miners`` and ``/v1/models``
views) and plans for both planners over its miners grouped by shape (``shapes.py``).
Miners that disconnected are remembered (bounded) so prices and ``never_matches_reason``
survive a short cut.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.domain.jobs import Job, JobStatus, QueuedJob
from coordinator.domain.matching import (
    JobDemand,
    MinerSnapshot,
    eligible,
    hardware_fits,
    queue_reason_counted,
)
from coordinator.domain.pricing import Offer
from coordinator.hub.shapes import Shape, ShapeIndex
from protocol.messages import Advert, Message, ModelOffer, normalise_gpu_type
from protocol.money import uait_to_ait
from protocol.timefmt import iso_ms, now_ms

MAX_REMEMBERED = 1000  # disconnected miners kept for prices and reasons
BALANCE_FRESH_MS = 5_000  # a client balance the dispatcher read is used for reasons this long
MAX_BALANCES = 10_000  # client balances remembered for queue reasons

Sender = Callable[[Message], Awaitable[bool]]
Closer = Callable[[int, str], Awaitable[None]]


@dataclass
class Track:
    """What this process has seen a miner do (for jobs_completed and reputation)."""

    completed: int = 0
    failed: int = 0
    rejected: int = 0

    @property
    def reputation(self) -> float:
        # Laplace-smoothed share of good outcomes: a new miner starts at 0.5.
        good, bad = self.completed, self.failed + self.rejected
        return round((good + 1) / (good + bad + 2), 3)


# The fields `free_slots` is made of, besides `running`: a change is reported to the index.
_SLOT_FIELDS = frozenset({"reserved", "draining", "resumed"})


@dataclass
class MinerConn:
    """One authenticated websocket connection (mutable: running jobs change).

    Every change of its free slots is reported to its shape in the registry's index of
    free miners (coordinator/hub/shapes.py): assignments to `reserved`, `draining` and
    `resumed` are seen by `__setattr__`, and `running` reports its own adds and drops."""

    miner_id: str
    public_key: str
    address: str
    key_id: str
    advert: Advert
    send: Sender  # False when the socket is gone
    close: Closer
    writable: Callable[[], bool] = lambda: True  # False while sent frames pile up unread
    connected_ms: int = field(default_factory=now_ms)
    running: RunningJobs = field(init=False)
    # Slots promised to claims not yet committed (the dispatcher's and those made at
    # admission): two planners must not fill one slot twice.
    reserved: int = 0
    draining: bool = False
    resumed: bool = False  # no assignments until the miner said what it still runs
    utilisation: int = 0
    shape: Shape | None = field(default=None, repr=False, compare=False)  # while registered
    _listing: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.running = RunningJobs(self)

    @property
    def free_slots(self) -> int:
        if self.draining or not self.resumed:
            return 0
        return max(0, self.advert.max_concurrency - len(self.running) - self.reserved)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SLOT_FIELDS and self.__dict__.get("shape") is not None:
            before = self.free_slots
            object.__setattr__(self, name, value)
            self.slots_changed(before)
        else:
            object.__setattr__(self, name, value)

    def listing(self) -> dict[str, Any]:
        """What `GET /v1/miners` shows of it that stays as it is while it is connected
        (the advert is the hello's), made once."""
        if self._listing is None:
            advert = self.advert
            self._listing = {
                "miner_id": self.miner_id,
                "address": self.address,
                "gpus": [g.to_json() for g in advert.gpus],
                "models": [
                    {
                        "name": m.name,
                        "runtime": m.runtime,
                        "unit": m.unit,
                        "price": uait_to_ait(m.price_uait_per_unit),
                        "price_uait_per_unit": m.price_uait_per_unit,
                    }
                    for m in advert.models
                ],
                "max_concurrency": advert.max_concurrency,
                "software_version": advert.software_version,
                "connected_at": iso_ms(self.connected_ms),
            }
        return self._listing

    def slots_changed(self, before: int) -> None:
        shape = self.shape
        if shape is None:
            return
        after = self.free_slots
        if after != before:
            shape.free_slots += after - before
            shape.index.free_slots += after - before
            if after > before:
                shape.push(self)


class RunningJobs(set[str]):
    """A connection's running jobs, which report each add and drop to it (a job that
    ends frees a slot the index must hear of), and the job as this process leased it,
    where it did (`lease_of`: its settlement then need not read the whole row again).
    Change it with add, add_lease, discard, remove and clear only."""

    def __init__(self, conn: MinerConn) -> None:
        super().__init__()
        self._conn = conn
        self._leases: dict[str, Job] = {}

    def add(self, job_id: str) -> None:
        if job_id not in self:
            before = self._conn.free_slots
            super().add(job_id)
            self._conn.slots_changed(before)

    def add_lease(self, job: Job) -> None:
        """Add a job this process has just leased to the connection's miner, as leased."""
        self.add(job.job_id)
        self._leases[job.job_id] = job

    def lease_of(self, job_id: str) -> Job | None:
        return self._leases.get(job_id)

    def discard(self, job_id: object) -> None:
        if job_id in self:
            before = self._conn.free_slots
            super().discard(job_id)
            self._leases.pop(job_id, None)  # type: ignore[call-overload]  # a member: a str
            self._conn.slots_changed(before)

    def remove(self, job_id: str) -> None:
        if job_id not in self:
            raise KeyError(job_id)
        self.discard(job_id)

    def clear(self) -> None:
        before = self._conn.free_slots
        super().clear()
        self._leases.clear()
        self._conn.slots_changed(before)


def demand_of(job: Job | QueuedJob, available_uait: int | None = None) -> JobDemand:
    """The scheduler's view of a job row (and of its client's available balance, when the
    caller knows it)."""
    req = job.requirements
    return JobDemand(
        job_id=job.job_id,
        model=job.model,
        priority=str(job.priority),
        created_ms=job.created_at_ms,
        gpu_type=normalise_gpu_type(req.gpu_type) if req.gpu_type else None,
        gpu_count=max(1, req.gpu_count),
        min_vram_gb=req.min_vram_gb or 0,
        max_price_uait=job.max_price_uait,
        estimated_units=max(1, job.estimated_units),
        units_by_unit=job.units_by_unit,
        held_uait=job.estimated_cost_uait,
        available_uait=available_uait,
    )


class MinerRegistry:
    def __init__(self) -> None:
        self._conns: dict[str, MinerConn] = {}
        # key_id -> miner ids connected or mid-handshake with it (the per-key cap)
        self._by_key: dict[str, set[str]] = {}
        # Miners not connected now, remembered (bounded) for prices and reasons; connected
        # ones are read from their connection. Until round 16 this one bounded map held
        # both, so with over 1,000 connected the earliest were forgotten: their prices left
        # out of escrows and `fail_if_unmatched` refusing jobs only they could run.
        self._away: OrderedDict[str, Advert] = OrderedDict()
        # model -> one Offer per distinct (unit, price) quoted, until a miner comes or goes:
        # every submitted job is priced from them (docs/benchmarks.md, round 16).
        self._offers: dict[str, tuple[Offer, ...]] = {}
        self._tracks: dict[str, Track] = {}
        self._index = ShapeIndex()  # the connected miners, by shape, free ones in order
        # (chain_id, address) -> (available uAIT, when read): what the dispatcher last saw
        self._balances: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    # -- connections ------------------------------------------------------------------
    def add(self, conn: MinerConn) -> MinerConn | None:
        """Register a connection; returns the older connection of the same miner, if any."""
        old = self._conns.get(conn.miner_id)
        if old is not None and old.key_id != conn.key_id:
            self._drop_from_key(old.key_id, old.miner_id)
        if old is not None:
            self._index.remove(old)
        self._conns[conn.miner_id] = conn
        self._index.add(conn)
        self._by_key.setdefault(conn.key_id, set()).add(conn.miner_id)
        self._away.pop(conn.miner_id, None)
        self._offers.clear()
        return old

    def remember(self, miner_id: str, advert: Advert) -> None:
        """A miner seen before (e.g. stored in the database) that is not connected now."""
        if miner_id not in self._conns:
            self._away[miner_id] = advert
            self._away.move_to_end(miner_id)
            while len(self._away) > MAX_REMEMBERED:
                self._away.popitem(last=False)
            self._offers.clear()

    def remove(self, conn: MinerConn) -> None:
        if self._conns.get(conn.miner_id) is conn:
            del self._conns[conn.miner_id]
            self._index.remove(conn)
            self._drop_from_key(conn.key_id, conn.miner_id)
            self.remember(conn.miner_id, conn.advert)

    def _adverts(self) -> Iterator[tuple[str, Advert]]:
        """Every miner known: those remembered, then those connected."""
        yield from self._away.items()
        for miner_id, conn in self._conns.items():
            yield miner_id, conn.advert

    def reserve(self, key_id: str, miner_id: str, limit: int) -> int | None:
        """Hold a place for `miner_id` under `key_id` while its handshake finishes; or,
        when `limit` other miners already hold one, how many do (nothing reserved).
        Taken before the handshake's first await, so concurrent handshakes cannot all
        pass the check."""
        held = self._by_key.setdefault(key_id, set())
        others = len(held) - (miner_id in held)
        if others >= limit:
            return others
        held.add(miner_id)
        return None

    def unreserve(self, key_id: str, miner_id: str) -> None:
        """A handshake that reserved and then failed before `add`."""
        conn = self._conns.get(miner_id)
        if conn is None or conn.key_id != key_id:
            self._drop_from_key(key_id, miner_id)

    def _drop_from_key(self, key_id: str, miner_id: str) -> None:
        held = self._by_key.get(key_id)
        if held is not None:
            held.discard(miner_id)
            if not held:
                del self._by_key[key_id]

    def get(self, miner_id: str | None) -> MinerConn | None:
        return self._conns.get(miner_id) if miner_id else None

    def connections(self) -> list[MinerConn]:
        return list(self._conns.values())

    def track(self, miner_id: str) -> Track:
        return self._tracks.setdefault(miner_id, Track())

    # -- the free miners, by shape (coordinator/hub/shapes.py) ---------------------------
    def free_slots(self) -> int:
        """Free slots over every connected miner."""
        return self._index.free_slots

    def plan(self, jobs: Sequence[JobDemand]) -> list[tuple[str, MinerConn]]:
        """The scheduler's (job id, miner) pairs for these jobs over the free miners, each
        slot reserved on its connection; the caller gives back (`reserved -= 1`) what it
        does not claim."""
        return self._index.plan(jobs)

    def free_offers(self) -> dict[str, set[ModelOffer]]:
        """The distinct offers of miners with a free slot, by model."""
        return self._index.free_offers()

    # -- client balances the dispatcher read (so queue reasons can name a short wallet) ----
    def note_balances(self, balances: Mapping[tuple[str, str], int], at_ms: int) -> None:
        for key, available_uait in balances.items():
            self._balances[key] = (available_uait, at_ms)
            self._balances.move_to_end(key)
        while len(self._balances) > MAX_BALANCES:
            self._balances.popitem(last=False)

    def available_of(self, job: Job, now: int | None = None) -> int | None:
        """The client's available balance as the dispatcher recently read it, else None."""
        seen = self._balances.get((job.chain_id, job.client_address))
        if seen is None:
            return None
        available_uait, at_ms = seen
        return available_uait if (now or now_ms()) - at_ms <= BALANCE_FRESH_MS else None

    # -- MinerRegistryProtocol --------------------------------------------------------
    def queue_reasons(self, jobs: Sequence[Job]) -> list[str | None]:
        # The miners are read once, by shape, and jobs that ask the same of them (a batch
        # of alike jobs, a commit's events) share one answer: per job this was 4% of the
        # coordinator under batch submits (docs/benchmarks.md, round 7), and read miner by
        # miner 43% with 10,000 miners connected (round 16).
        shapes: list[tuple[MinerSnapshot, int]] | None = None
        answers: dict[tuple[Any, ...], str] = {}
        out: list[str | None] = []
        for job in jobs:
            if job.status != JobStatus.QUEUED:
                out.append(None)
                continue
            if shapes is None:
                shapes = [(s.stands_for(), len(s.members)) for s in self._index.shapes()]
            available = self.available_of(job)
            asks = (
                job.model,
                job.requirements,
                job.max_price_uait,
                job.estimated_units,
                job.estimated_cost_uait,
                tuple(job.units_by_unit.items()),
                available,
            )
            reason = answers.get(asks)
            if reason is None:
                reason = answers[asks] = queue_reason_counted(demand_of(job, available), shapes)
            out.append(reason)
        return out

    def never_matches_reason(self, job: Job) -> str | None:
        demand = demand_of(job)
        # Connected miners by shape (as many as look alike), remembered ones one by one.
        known = [(MinerSnapshot(m, a.gpus, a.models, 1), 1) for m, a in self._away.items()]
        known += [
            (MinerSnapshot("", s.gpus, s.models, 1), len(s.members)) for s in self._index.shapes()
        ]
        if any(eligible(m, demand) for m, _ in known):
            return None
        serving = [m for m, _ in known if m.offer(demand.model) is not None]
        if serving and any(hardware_fits(m.gpus, demand) for m in serving):
            return None  # only the price is off: prices change, keep the job
        return queue_reason_counted(demand, known)

    def offers(self, model: str) -> Sequence[Offer]:
        found = self._offers.get(model)
        if found is None:
            # One per distinct price and unit (the first miner seen quoting it): the
            # estimate reads no more, and thousands of miners quote a handful of prices.
            first: dict[tuple[str, int], Offer] = {}
            for miner_id, advert in self._adverts():
                offer = advert.offer(model)
                if offer is not None and (offer.unit, offer.price_uait_per_unit) not in first:
                    first[(offer.unit, offer.price_uait_per_unit)] = Offer(
                        miner_id,
                        model,
                        offer.price_uait_per_unit,
                        offer.unit,
                        miner_id in self._conns,
                    )
            found = self._offers[model] = tuple(first.values())
        return found

    def connected_count(self) -> int:
        return len(self._conns)

    def miners_view(
        self, model: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """`GET /v1/miners` items by miner id (those serving `model`, when given), from
        `offset`, `limit` of them (None: all to the end). Only the page is built, each
        from its connection's `listing`: with 10,000 miners connected the whole list was
        built for each request, ~130 ms on the event loop (docs/benchmarks.md, round 17)."""
        if model is None:
            conns = list(self._conns.values())
        else:
            shapes = self._index.serving().get(model, ())
            conns = [c for shape in shapes for c in shape.members.values()]
        conns.sort(key=_miner_id)
        page = conns[offset:] if limit is None else conns[offset : offset + limit]
        return [self._miner_item(conn) for conn in page]

    def _miner_item(self, conn: MinerConn) -> dict[str, Any]:
        track = self.track(conn.miner_id)
        return {
            **conn.listing(),
            "status": "draining" if conn.draining else ("busy" if not conn.free_slots else "idle"),
            "running_jobs": len(conn.running),
            "utilisation": conn.utilisation,
            "jobs_completed": track.completed,
            "reputation": track.reputation,
        }

    def models_view(self) -> list[dict[str, Any]]:
        """`GET /v1/models` items, read off the shapes (miners with the same devices and
        offers), not off every connection."""
        out = []
        serving = self._index.serving()
        for name in sorted(serving):
            shapes = serving[name]
            offers = [offer for shape in shapes if (offer := shape.advert.offer(name))]
            prices = [offer.price_uait_per_unit for offer in offers]
            out.append(
                {
                    "model": name,
                    "runtime": offers[0].runtime,
                    "unit": offers[0].unit,
                    "miners_online": sum(len(shape.members) for shape in shapes),
                    "free_slots": sum(shape.free_slots for shape in shapes),
                    "price_min": uait_to_ait(min(prices)),
                    "price_max": uait_to_ait(max(prices)),
                    "price_min_uait_per_unit": min(prices),
                    "price_max_uait_per_unit": max(prices),
                }
            )
        return out


def _miner_id(conn: MinerConn) -> str:
    return conn.miner_id
