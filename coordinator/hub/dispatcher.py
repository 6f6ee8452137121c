"""The hub's background tasks: dispatcher, lease reaper and cancel listener.

- Dispatcher: woken by ``JobBus.wake()`` (a new job, a freed slot, a new miner, or a
  NOTIFY from another coordinator process) and, as a safety net, every ``POLL_S``; it
  plans with the pure scheduler over the queued jobs and the free miners, claims each
  pair atomically and pushes ``assign`` at once. Miners never poll. For a job whose
  escrow is below what a free miner would cost, it reads the client's available balance
  first, so the plan leaves out miners the client cannot fund (the claim tops the escrow
  up; docs/pricing.md).
- Reaper: expires leases that were not renewed (re-queue or fail by attempts) and ends
  jobs past their deadline (``timed_out``), telling the miner that held them to stop.
- Cancel listener: a ``cancel`` event on the bus (client cancel, time-out) is pushed to
  the miner running that job. The job ids are remembered for a while: a lease committed
  just before the cancel, whose ``assign`` was not yet written, is then not sent at all
  (``Hub.deliver``), so the miner never runs a job it would not be paid for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from coordinator.domain.jobs import Job, JobStatus, QueuedJob
from coordinator.domain.matching import JobDemand, over_escrow
from coordinator.hub.registry import MinerConn, MinerRegistry, demand_of
from coordinator.service import lifecycle
from coordinator.service.core import Core
from coordinator.service.dispatch import assignment
from coordinator.service.lifecycle import Change, MinerIdentity
from protocol.messages import Cancel, ModelOffer
from protocol.timefmt import now_ms

log = logging.getLogger(__name__)

POLL_S = 1.0  # dispatcher safety net when no wake-up comes
QUEUE_SCAN = 500  # queued jobs considered per round, at most
# A round first reads only the head of the queue: a job per free slot and SCAN_SLACK more.
# Under a backlog, reading 500 rows to fill a few freed slots was 8% of the coordinator
# (docs/benchmarks.md, round 6), and 4 rows a free slot still read the whole queue of the
# batch bench each round (round 17). When the head fills fewer slots than are free (its
# jobs need other miners), the round reads the full QUEUE_SCAN.
SCAN_SLACK = 32
MAX_ROUNDS = 10  # planning rounds per wake-up before waiting again
ASSIGNED, LOST, SKIPPED = "assigned", "lost", "skipped"  # outcomes of one claim
REAP_MIN_S = 0.05
REAP_MAX_S = 1.0
# Cancelled job ids kept for `deliver`. A lease and its send are milliseconds apart, and a
# cancel is final (a cancelled or timed-out job is never leased again).
RECENT_CANCELS = 4096
# At shutdown the hub waits this long for the dispatcher's round in progress and for the
# sends of claims made at admission. The miners are disconnected by then, so a claim that
# commits is given back to the queue (`Hub.deliver`) instead of waiting for its lease to
# run out; the database closes after the hub.
STOP_DRAIN_S = 5.0


class Hub:
    def __init__(self, app: web.Application, registry: MinerRegistry) -> None:
        self.app = app
        self.registry = registry
        self.parsed_queue: lifecycle.QueuedCache = {}
        # job id -> (the parsed row it was built from, the scheduler's view of it)
        self._demand_cache: dict[str, tuple[QueuedJob, JobDemand]] = {}
        # job id -> the job as this process committed it queued (admitted): its claim takes
        # it instead of the whole row while the row is unchanged (lifecycle.claim_job).
        self._admitted: dict[str, Job] = {}
        # The models of the jobs the last planning round left queued (None: it did not read
        # the whole queue). A submit leaves the free slots of miners that serve one of them
        # to the dispatcher (admission.py) instead of planning for nothing; a job nobody
        # serves keeps no one else waiting.
        self.waiting_models: frozenset[str] | None = frozenset()
        self._cancelled: OrderedDict[str, None] = OrderedDict()  # as cancels_forever saw them
        self.stopping = False  # set at shutdown: the dispatcher ends after its round

    @property
    def core(self) -> Core:
        return Core.of(self.app)

    def admitted(self, jobs: Sequence[Job]) -> None:
        if len(self._admitted) + len(jobs) > lifecycle.MAX_PARSED_QUEUED:
            self._admitted.clear()  # mostly jobs that ended or went elsewhere unclaimed
        for job in jobs:
            self._admitted[job.job_id] = job

    # -- dispatcher -------------------------------------------------------------------
    async def dispatch_forever(self) -> None:
        core = self.core
        while not self.stopping:
            try:
                for _ in range(MAX_ROUNDS):
                    if self.stopping or not await self.dispatch_once(core):
                        break
            except Exception:
                log.exception("dispatch round failed; retrying")
            if not self.stopping:
                await core.bus.wait_for_work(POLL_S)

    async def dispatch_once(self, core: Core) -> bool:
        """One planning round; True when another round may place more: the scan was full,
        or a claim was lost to another coordinator process (its miner is still free)."""
        free_slots = self.registry.free_slots()
        if free_slots <= 0:
            return False
        scan = min(QUEUE_SCAN, free_slots + SCAN_SLACK)
        jobs, pairs = await self._plan(core, scan)
        if len(pairs) < free_slots and len(jobs) == scan < QUEUE_SCAN:
            # The head holds jobs these miners cannot run: look further.
            self._give_back(pairs)
            scan = QUEUE_SCAN
            jobs, pairs = await self._plan(core, scan)
        if not jobs:
            self.waiting_models = frozenset()
            return False
        by_id = {j.job_id: j for j in jobs}
        # Claim the whole plan at once: the claims share one group commit instead of
        # waiting for a commit each (docs/benchmarks.md: serial claims capped dispatch).
        # The plan reserved each slot (nothing awaited since); _assign gives it back.
        claims = [self._assign(core, conn, by_id[job_id]) for job_id, conn in pairs]
        outcomes = await asyncio.gather(*claims)
        assigned = outcomes.count(ASSIGNED)
        if len(jobs) == scan:
            self.waiting_models = None
        else:
            placed = {
                job_id
                for (job_id, _), outcome in zip(pairs, outcomes, strict=True)
                if outcome == ASSIGNED
            }
            self.waiting_models = frozenset(j.model for j in jobs if j.job_id not in placed)
        return (assigned > 0 and len(jobs) == scan) or LOST in outcomes

    def _give_back(self, pairs: list[tuple[str, MinerConn]]) -> None:
        """The slots a plan reserved and nobody will claim."""
        for _, conn in pairs:
            conn.reserved -= 1

    async def _plan(
        self, core: Core, scan: int
    ) -> tuple[list[QueuedJob], list[tuple[str, MinerConn]]]:
        """The first `scan` queued jobs and the (job id, miner) pairs planned for them,
        their slots reserved."""
        jobs = await lifecycle.list_queued(core, scan, self.parsed_queue)
        if not jobs:
            return jobs, []
        demands = await self._demands(core, jobs)
        return jobs, self.registry.plan(demands)  # after the awaits: the miners as they are

    async def _demands(self, core: Core, jobs: list[QueuedJob]) -> list[JobDemand]:
        """The scheduler's view of the queued jobs; with the client's available balance
        for those a free miner would cost more than their escrow (one read, only then)."""
        demands = [self._demand(j) for j in jobs]
        offers = self.registry.free_offers()  # distinct, by shape (round 16)
        short = {
            (j.chain_id, j.client_address)
            for j, d in zip(jobs, demands, strict=True)
            if over_escrow(d, offers.get(d.model, ()))
        }
        if not short:
            return demands
        balances = await lifecycle.available_balances(core, short)
        self.registry.note_balances(balances, now_ms())
        return [
            demand_of(j, balances[(j.chain_id, j.client_address)])
            if (j.chain_id, j.client_address) in short
            else d
            for j, d in zip(jobs, demands, strict=True)
        ]

    def _demand(self, job: QueuedJob) -> JobDemand:
        """`demand_of(job)`, kept while the queue read gives back the same parsed row:
        under a backlog each round plans the same head again (2% of the coordinator
        building them anew; docs/benchmarks.md, round 16)."""
        seen = self._demand_cache.get(job.job_id)
        if seen is not None and seen[0] is job:
            return seen[1]
        if len(self._demand_cache) >= lifecycle.MAX_PARSED_QUEUED:
            self._demand_cache.clear()  # mostly jobs claimed long ago
        demand = demand_of(job)
        self._demand_cache[job.job_id] = (job, demand)
        return demand

    async def _assign(self, core: Core, conn: MinerConn, job: QueuedJob) -> str:
        job_id = job.job_id
        offer = conn.advert.offer(job.model)
        if offer is None:
            conn.reserved -= 1
            return SKIPPED
        identity = MinerIdentity(conn.miner_id, conn.address, conn.public_key)
        try:
            claimed = await lifecycle.claim_job(
                core,
                job_id,
                identity,
                offer.price_uait_per_unit,
                offer.unit,
                self._admitted.pop(job_id, None),
            )
        finally:
            conn.reserved -= 1
        if claimed is None:
            # Taken by another process, cancelled, past its deadline, or the client's
            # balance went to another claim: the next round plans with fresh balances.
            return LOST
        return ASSIGNED if await self.deliver(core, conn, claimed, offer) else SKIPPED

    async def deliver(self, core: Core, conn: MinerConn, claimed: Job, offer: ModelOffer) -> bool:
        """Send a committed claim to its miner; False when it was not sent: the miner went
        away meanwhile (the job is given back to the queue), or the job was cancelled."""
        job_id = claimed.job_id
        conn.running.add_lease(claimed)
        msg = await assignment(core, claimed, offer)
        if self.was_cancelled(job_id):
            # Its cancel committed after the lease; any `cancel` sent for it went out before
            # this `assign` would have, and a miner ignores a cancel for a job it never had.
            conn.running.discard(job_id)
            log.info("job cancelled before it reached its miner", extra={"job_id": job_id})
            return False
        if not await conn.send(msg):
            conn.running.discard(job_id)
            await lifecycle.release_job(core, job_id, conn.miner_id, "miner went away")
            return False
        log.info(
            "job assigned",
            extra={"job_id": job_id, "miner_id": conn.miner_id, "attempt": claimed.attempts},
        )
        return True

    # -- reaper -----------------------------------------------------------------------
    async def reap_forever(self) -> None:
        core = self.core
        period = min(REAP_MAX_S, max(REAP_MIN_S, core.settings.lease_seconds / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.reap_once(core)
            except Exception:
                log.exception("reaper round failed; retrying")

    async def reap_once(self, core: Core) -> None:
        for change in await lifecycle.expire_leases(core):
            await self._stop_holder(change, "lease expired")
        # Timed-out jobs publish a cancel event; the cancel listener stops their miners.
        await lifecycle.time_out_jobs(core)

    async def _stop_holder(self, change: Change, reason: str) -> None:
        job = change.job
        if job is None:
            return
        await self._tell_to_stop(job.miner_id, job.job_id, reason)  # requeued, it names its miner
        if job.status == JobStatus.QUEUED:
            log.info("lease expired; job re-queued", extra={"job_id": job.job_id})

    # -- cancel listener --------------------------------------------------------------
    async def cancels_forever(self) -> None:
        core = self.core
        async with core.bus.subscribe_cancels() as sub:
            while True:
                event = await sub.get()
                if event is None:
                    continue
                job_id = str(event.get("job_id"))
                self._note_cancelled(job_id)
                reason = _reason_text(str(event.get("reason") or "cancelled"))
                await self._tell_to_stop(event.get("miner_id"), job_id, reason)

    async def _tell_to_stop(self, miner_id: str | None, job_id: str, reason: str) -> None:
        """Send `cancel` to the miner running `job_id` on this process, found by the id the
        job or its event names (scanning every connection for the job took 0.1-0.2 ms with
        10,000 miners), and free its slot."""
        conn = self.registry.get(miner_id)
        if conn is None or job_id not in conn.running:
            return  # held by a miner on another process, or already gone
        conn.running.discard(job_id)
        await conn.send(Cancel(job_id, reason))
        self.core.bus.wake()

    def was_cancelled(self, job_id: str) -> bool:
        """Whether the cancel listener saw `job_id` cancelled (lately: RECENT_CANCELS)."""
        return job_id in self._cancelled

    def _note_cancelled(self, job_id: str) -> None:
        self._cancelled[job_id] = None
        if len(self._cancelled) > RECENT_CANCELS:
            self._cancelled.popitem(last=False)


def _reason_text(reason: str) -> str:
    return {
        "cancelled": "cancelled by the client",
        "timed_out": "timed out: timeout_seconds passed",
    }.get(reason, reason)


async def hub_tasks(
    app: web.Application, hub: Hub, sends: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """cleanup_ctx body: run the three loops for the app's lifetime. At its end (the
    miners are disconnected by then) the dispatcher finishes its round and `sends` (the
    claims made at admission) finish, each within STOP_DRAIN_S, before anything is
    cancelled: a claim cancelled between its commit and its send would keep its job
    leased to a miner that never got it."""
    dispatcher = asyncio.create_task(hub.dispatch_forever(), name="ait-dispatcher")
    tasks = [
        dispatcher,
        asyncio.create_task(hub.reap_forever(), name="ait-lease-reaper"),
        asyncio.create_task(hub.cancels_forever(), name="ait-cancel-listener"),
    ]
    yield
    hub.stopping = True
    hub.core.bus.wake()
    await asyncio.wait([dispatcher], timeout=STOP_DRAIN_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(sends(), STOP_DRAIN_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
