"""Measured throughput of each model (metered units per second), for time estimates."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from sqlalchemy import bindparam, select

from coordinator.db import schema
from coordinator.service.core import Core
from protocol.timefmt import now_ms

jobs = schema.jobs

THROUGHPUT_JOBS = 20  # recent completed jobs of a model that its throughput is taken from
THROUGHPUT_TTL_MS = 30_000
_throughput: dict[tuple[int, str], tuple[int, Measured | None]] = {}

# The model's latest completions, read newest first off ix_jobs_model_completed: ordered by
# the receipts' time, it joined and sorted every completed job of the model (40 ms at
# 38,000 jobs, on the event loop, every TTL), growing with the history (schema version 3).
RECENT_COMPLETED = (
    select(schema.receipts.c.receipt, jobs.c.started_at_ms, jobs.c.completed_at_ms)
    .select_from(jobs.join(schema.receipts, schema.receipts.c.job_id == jobs.c.job_id))
    .where(jobs.c.model == bindparam("t_model"), schema.COMPLETED_ONLY)
    .order_by(jobs.c.completed_at_ms.desc())
    .limit(THROUGHPUT_JOBS)
)


@dataclass(frozen=True)
class Measured:
    units_per_second: float
    unit: str  # the unit the model's miners metered


async def measured_throughput(core: Core, model: str) -> Measured | None:
    """Metered units per second of the model's recent completed jobs (None without
    history); cached a little while per model so submitting stays one write."""
    now = now_ms()
    cache_key = (id(core.db), model)
    hit = _throughput.get(cache_key)
    if hit is not None and hit[0] > now:
        return hit[1]
    units, millis, unit = 0, 0, ""
    async with core.db.read() as conn:
        for row in await conn.execute(RECENT_COMPLETED, {"t_model": model}):
            receipt = orjson.loads(row.receipt)
            units += int(receipt.get("units", 0))
            unit = unit or str(receipt.get("unit", ""))
            millis += max(1, (row.completed_at_ms or 0) - (row.started_at_ms or 0))
    rate = Measured(units * 1000 / millis, unit) if units and millis else None
    if len(_throughput) > 1000:
        _throughput.clear()
    _throughput[cache_key] = (now + THROUGHPUT_TTL_MS, rate)
    return rate


def forget(core: Core, model: str) -> None:
    """A job of the model just completed: drop a cached "no history" so the next estimate
    uses the first measurement. A cached figure stays until its TTL: re-reading 20
    receipts after every completion made each submit pay for a query under load."""
    key = (id(core.db), model)
    hit = _throughput.get(key)
    if hit is not None and hit[1] is None:
        del _throughput[key]
