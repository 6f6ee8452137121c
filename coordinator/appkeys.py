"""Typed application state shared by the coordinator's parts (aiohttp `web.AppKey`s).

Every part reads what it needs from the app: `app[DATABASE]`, `app[JOB_BUS]`, ...
`MINER_REGISTRY` is set by `coordinator.hub.setup_hub(app)`; the REST side uses only the
methods of `MinerRegistryProtocol`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from coordinator.bus import JobBus
    from coordinator.db.database import Database
    from coordinator.domain.jobs import Job
    from coordinator.domain.pricing import Offer
    from coordinator.loop_lag import LoopLag
    from coordinator.metrics import Metrics
    from coordinator.service.lifecycle import ClaimRequest
    from coordinator.settings import Settings


class MinerRegistryProtocol(Protocol):
    """What the REST API asks the hub's in-process miner registry."""

    def queue_reasons(self, jobs: Sequence[Job]) -> list[str | None]:
        """For each job, a sentence saying why it is queued and not running now; None for
        a job that is not queued or should run."""

    def never_matches_reason(self, job: Job) -> str | None:
        """Why no connected or registered miner could ever run the job (model/requirements,
        ignoring how busy miners are); None when some miner could. Used for
        `fail_if_unmatched`."""

    def offers(self, model: str) -> Sequence[Offer]:
        """Advertised prices for `model` of connected (and known registered) miners: each
        distinct unit and price once."""

    def connected_count(self) -> int:
        """How many miners are connected to this process."""

    def miners_view(
        self, model: str | None = None, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A page of `GET /v1/miners` items (miner_id, gpus, models, prices, status,
        jobs_completed, reputation) by miner id, of those serving `model` when given."""

    def models_view(self) -> list[dict[str, Any]]:
        """`GET /v1/models` items: model, miners online, price range."""


class AdmissionDispatchProtocol(Protocol):
    """What job submission asks the hub so a free miner can claim a job in the commit that
    admits it (docs/architecture.md, "Dispatch at admission")."""

    def reserve(self, jobs: Sequence[Job], lease_ms: int) -> dict[str, ClaimRequest]:
        """Claims for the jobs free miners can take now, by job id; each holds a slot of
        its miner until it is delivered or released."""

    def release(self, job_ids: Iterable[str]) -> None:
        """Give back the slots of these jobs' claims (not made; unknown ids are ignored)."""

    def deliver(self, claimed: Sequence[Job]) -> None:
        """Send committed claims to their miners (in the background)."""

    def queued(self, jobs: Sequence[Job]) -> None:
        """Jobs just committed queued, as committed: the dispatcher's claim of one takes it
        instead of reading its whole row again while the row is unchanged."""


SETTINGS: web.AppKey[Settings] = web.AppKey("ait_settings")
DATABASE: web.AppKey[Database] = web.AppKey("ait_database")  # engines + group-commit writer
JOB_BUS: web.AppKey[JobBus] = web.AppKey("ait_job_bus")
MINER_REGISTRY: web.AppKey[MinerRegistryProtocol] = web.AppKey("ait_miner_registry")
ADMISSION_DISPATCH: web.AppKey[AdmissionDispatchProtocol] = web.AppKey("ait_admission_dispatch")
COORDINATOR_KEY: web.AppKey[Ed25519PrivateKey] = web.AppKey("ait_coordinator_key")
METRICS: web.AppKey[Metrics] = web.AppKey("ait_metrics")
LOOP_LAG: web.AppKey[LoopLag] = web.AppKey("ait_loop_lag")  # its timer runs with the app
