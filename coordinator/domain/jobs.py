"""The job state machine and the job record.

```
            claim               result ok
  queued ───────────▶ running ───────────▶ completed
    ▲  │                │  │
    │  │   lease expired│  │ failed attempt (attempts < max)
    │  │  ◀─────────────┘  │
    │  │                   ├──────────────▶ failed      (attempts exhausted / bad input)
    │  ├──────────────────▶├──────────────▶ cancelled   (DELETE /v1/jobs/{job_id})
    │  └──────────────────▶└──────────────▶ timed_out   (deadline passed)
```
A job leaves the queue only through a claim, and every terminal state is final.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypedDict, Unpack

from protocol.frozen import direct_init


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


# The statuses' names in lifecycle order: what query parameters accept, their error
# messages list and the OpenAPI document enumerates.
STATUS_VALUES: tuple[str, ...] = tuple(status.value for status in JobStatus)

TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)

TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.TIMED_OUT,
        }
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """Stored as an int so the queue orders by `priority DESC, created_at_ms ASC`."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        return _RANK_PRIORITY[rank]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}
_RANK_PRIORITY = {rank: prio for prio, rank in _PRIORITY_RANK.items()}

UNITS_BY_UNIT = "units_by_unit"  # Job.extra key: estimated units by metering unit


@direct_init
@dataclass(frozen=True)
class Requirements:
    """What a job needs from a miner; `gpu_type` is lower-cased, otherwise as the client sent."""

    gpu_type: str | None = None
    gpu_count: int = 1
    min_vram_gb: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu_type": self.gpu_type,
            "gpu_count": self.gpu_count,
            "min_vram_gb": self.min_vram_gb,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Requirements:
        return cls(
            gpu_type=data.get("gpu_type"),
            gpu_count=int(data.get("gpu_count", 1)),
            min_vram_gb=data.get("min_vram_gb"),
        )


@direct_init
@dataclass(frozen=True)
class Job:
    """One row of the jobs table as a value; services build new ones, never mutate."""

    job_id: str
    client_address: str
    key_id: str
    chain_id: str
    model: str
    status: JobStatus
    priority: Priority
    requirements: Requirements
    params: Mapping[str, Any]
    output_config: Mapping[str, Any]
    input_json: str | None  # the JSON input as text; None when the input is a file
    input_file_id: str | None
    input_sha256: str  # sha256 of the bytes the miner receives (file bytes or UTF-8 JSON text)
    input_bytes: int
    timeout_seconds: int
    deadline_ms: int  # created_at_ms + timeout_seconds: queue time counts too
    max_price_uait: int | None
    estimated_cost_uait: int  # held in escrow (hold:{job_id})
    estimated_units: int
    estimated_time_seconds: int
    created_at_ms: int
    updated_at_ms: int
    name: str | None = None
    cost_uait: int | None = None
    progress: int = 0
    progress_message: str | None = None
    attempts: int = 0
    miner_id: str | None = None
    miner_address: str | None = None
    lease_expires_at_ms: int | None = None
    started_at_ms: int | None = None
    completed_at_ms: int | None = None
    error: str | None = None
    result: Any = None
    output_sha256: str | None = None
    output_content_type: str | None = None
    output_filename: str | None = None
    output_size: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def evolve(self, **changes: Unpack[JobChanges]) -> Job:
        """This job with `changes` (`dataclasses.replace` without its cost: a frozen
        dataclass sets each of the 39 fields through `object.__setattr__`, ~15 us a copy
        and several copies a job on the hot path; this copies the instance dict, ~1.5 us).
        `JobChanges` names and types every field, so the type checker still checks the
        changes; there is no `__post_init__` to skip."""
        if not changes.keys() <= _JOB_FIELDS:
            raise TypeError(f"Job has no field {sorted(changes.keys() - _JOB_FIELDS)}")
        evolved = object.__new__(Job)
        evolved.__dict__.update(self.__dict__)
        evolved.__dict__.update(changes)
        return evolved

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Job:
        """`Job(**fields)` for a mapping whose keys are known to be exactly `Job`'s fields,
        each of its type: unchecked, for a reader that checked its column names once (the keys
        check and the keyword copy were ~3.5 us of a ~12 us row read; round 19)."""
        job = object.__new__(cls)
        job.__dict__.update(fields)
        return job

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def units_by_unit(self) -> dict[str, int]:
        """Estimated units by metering unit, as priced at submit (docs/pricing.md)."""
        return metered_units(self.extra)

    def units_in(self, unit: str) -> int:
        """Estimated units for a miner that meters in `unit`; jobs stored before the
        per-unit estimate fall back to `estimated_units`."""
        return self.units_by_unit.get(unit, max(1, self.estimated_units))


_JOB_FIELDS = frozenset(f.name for f in fields(Job))


class JobChanges(TypedDict, total=False):
    """Every field of `Job`, for `Job.evolve` (a test keeps the two the same)."""

    job_id: str
    client_address: str
    key_id: str
    chain_id: str
    model: str
    status: JobStatus
    priority: Priority
    requirements: Requirements
    params: Mapping[str, Any]
    output_config: Mapping[str, Any]
    input_json: str | None
    input_file_id: str | None
    input_sha256: str
    input_bytes: int
    timeout_seconds: int
    deadline_ms: int
    max_price_uait: int | None
    estimated_cost_uait: int
    estimated_units: int
    estimated_time_seconds: int
    created_at_ms: int
    updated_at_ms: int
    name: str | None
    cost_uait: int | None
    progress: int
    progress_message: str | None
    attempts: int
    miner_id: str | None
    miner_address: str | None
    lease_expires_at_ms: int | None
    started_at_ms: int | None
    completed_at_ms: int | None
    error: str | None
    result: Any
    output_sha256: str | None
    output_content_type: str | None
    output_filename: str | None
    output_size: int | None
    extra: Mapping[str, Any]


def metered_units(extra: Mapping[str, Any]) -> dict[str, int]:
    """The per-unit estimates a job's `extra` holds (`UNITS_BY_UNIT`), the valid ones."""
    found = extra.get(UNITS_BY_UNIT)
    if not isinstance(found, Mapping):
        return {}
    return {
        str(unit): n
        for unit, n in found.items()
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1
    }


@direct_init
@dataclass(frozen=True)
class QueuedJob:
    """A queued job as the dispatcher plans with it: the fields that matching and pricing
    read, not the whole row (the claim reads that, for the jobs it takes)."""

    job_id: str
    client_address: str
    chain_id: str
    model: str
    priority: Priority
    requirements: Requirements
    max_price_uait: int | None
    estimated_units: int
    estimated_cost_uait: int
    created_at_ms: int
    units_by_unit: Mapping[str, int]
