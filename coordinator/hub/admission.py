"""Dispatch at admission: free miners claim jobs in the commit that admits them.

Through the dispatcher a job took two commits to reach a miner: its admission, then its
claim after a planning round had read the queue back (docs/benchmarks.md, round 14). When
nothing is queued, the submit itself plans the new jobs onto the free miners with the
same scheduler, reserves those slots (`MinerConn.reserved`, which the dispatcher's
claims use too, so no slot is promised twice) and the admission inserts the jobs already
leased (`service.jobs.admit_many`, which keeps them queued when a job of a model their
miner serves was queued before them, or the miner would need an escrow top-up). After the
commit the claims are sent as the dispatcher sends its own (`Hub.deliver`). A queued job
that no free miner serves (a model nobody offers now) keeps no one else waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from coordinator.domain.jobs import Job
from coordinator.hub.dispatcher import Hub
from coordinator.hub.registry import MinerConn, demand_of
from coordinator.service.lifecycle import ClaimRequest, MinerIdentity
from protocol.messages import ModelOffer

log = logging.getLogger(__name__)


class AdmissionDispatch:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._held: dict[str, tuple[MinerConn, ModelOffer]] = {}  # job id -> its claim's
        self._sending: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs

    def reserve(self, jobs: Sequence[Job], lease_ms: int) -> dict[str, ClaimRequest]:
        waiting = self.hub.waiting_models
        # A job of a model that waits in the queue would only queue behind it (any miner
        # that could take it serves that model), and slots held for it meanwhile would
        # shrink the dispatcher's rounds (docs/benchmarks.md, round 14). The admission's
        # own check stays the rule; this only saves work.
        if waiting is None:
            return {}
        jobs = [j for j in jobs if j.model not in waiting]
        if not jobs:
            return {}
        registry = self.hub.registry
        if registry.free_slots() <= 0:
            return {}
        by_job = {j.job_id: j for j in jobs}
        claims: dict[str, ClaimRequest] = {}
        # The plan reserves each slot it gives (MinerConn.reserved): `release` or
        # `deliver` gives it back.
        for job_id, conn in registry.plan([demand_of(j) for j in jobs]):
            offer = conn.advert.offer(by_job[job_id].model)
            serves = conn.advert.model_names
            # plan() pairs only miners that serve the model; a job waiting in the queue
            # that this miner serves goes to it first, through the dispatcher.
            if offer is None or not waiting.isdisjoint(serves):
                conn.reserved -= 1
                continue
            self._held[job_id] = (conn, offer)
            identity = MinerIdentity(conn.miner_id, conn.address, conn.public_key)
            claims[job_id] = ClaimRequest(
                job_id, identity, offer.price_uait_per_unit, offer.unit, lease_ms, serves
            )
        return claims

    def release(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            held = self._held.pop(job_id, None)
            if held is not None:
                held[0].reserved -= 1

    def queued(self, jobs: Sequence[Job]) -> None:
        self.hub.admitted(jobs)

    def deliver(self, claimed: Sequence[Job]) -> None:
        sends = []
        for job in claimed:
            held = self._held.pop(job.job_id, None)
            if held is not None:
                conn = held[0]
                conn.reserved -= 1  # the slot passes to `running` at once, as a claim's does
                conn.running.add_lease(job)
                sends.append((held, job))
        if sends:
            task = asyncio.get_running_loop().create_task(self._send(sends))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def sent(self) -> None:
        """Once every claim made at admission so far has been sent (or given back)."""
        if self._sending:
            await asyncio.wait(set(self._sending))

    async def _send(self, sends: list[tuple[tuple[MinerConn, ModelOffer], Job]]) -> None:
        hub = self.hub
        core = hub.core
        deliveries = [hub.deliver(core, conn, job, offer) for (conn, offer), job in sends]
        outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
        for (_, job), outcome in zip(sends, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # Leased but not sent: its lease runs out and the reaper queues it again.
                log.error("sending job %s to its miner failed", job.job_id, exc_info=outcome)
