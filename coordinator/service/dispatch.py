"""Hub-side use cases that are not job-table writes: the assignment a claimed job becomes.
Job writes go through coordinator.service.lifecycle only; keys through service.keys."""

from __future__ import annotations

import base64
import math
from typing import Any

from coordinator.domain.jobs import Job
from coordinator.service.core import Core
from coordinator.service.lifecycle import job_input
from protocol.messages import Assign, ModelOffer
from protocol.timefmt import iso_ms, now_ms


async def assignment(core: Core, job: Job, offer: ModelOffer) -> Assign:
    """The ``assign`` frame for a job just claimed: input bytes exactly as hashed."""
    remaining_s = max(1, math.ceil((job.deadline_ms - now_ms()) / 1000))
    lease = iso_ms(job.lease_expires_at_ms or now_ms())
    assert lease is not None
    common: dict[str, Any] = {
        "job_id": job.job_id,
        "model": job.model,
        "input_sha256": job.input_sha256,
        "chain_id": job.chain_id,
        "client_address": job.client_address,
        "attempt": job.attempts,
        "price_uait_per_unit": offer.price_uait_per_unit,
        "unit": offer.unit,
        "lease_expires": lease,
        "timeout_s": remaining_s,
        "params": dict(job.params),
    }
    if job.input_file_id is None:
        return Assign(input_kind="json", input_json=job.input_json or "null", **common)
    data = await job_input(core, job)
    assert isinstance(data, bytes)
    return Assign(
        input_kind="file",
        input_b64=base64.b64encode(data).decode("ascii"),
        input_filename=job.extra.get("input_filename"),
        **common,
    )
