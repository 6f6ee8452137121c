"""`Job.evolve` and the dispatcher's parse of a queued row: the hot path's copy and
reading of a job, checked against `dataclasses.replace` and the constructors (their
`direct_init` constructors are held to the dataclasses' own in test_frozen)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from ait_harness import sample_job

from coordinator.domain.jobs import Job, JobChanges, JobStatus


def test_job_changes_names_every_field_of_job_with_its_type() -> None:
    fields = {f.name for f in dataclasses.fields(Job)}
    assert set(JobChanges.__annotations__) == fields
    assert JobChanges.__required_keys__ == frozenset()
    assert typing.get_type_hints(JobChanges) == {
        name: hint for name, hint in typing.get_type_hints(Job).items() if name in fields
    }


def test_evolve_equals_replace_and_leaves_the_original_alone() -> None:
    job = sample_job()
    changes: JobChanges = {
        "status": JobStatus.RUNNING,
        "miner_id": "miner_abc",
        "attempts": 1,
        "started_at_ms": 2_000,
        "extra": {**job.extra, "unit": "token"},
    }
    evolved = job.evolve(**changes)
    assert evolved == dataclasses.replace(job, **changes)
    assert evolved is not job and job.status == JobStatus.QUEUED and job.attempts == 0
    assert job.extra == {"units_by_unit": {"token": 5}}
    assert evolved.requirements is job.requirements  # unchanged fields are shared, as replace
    assert job.evolve() == job


def test_an_evolved_job_is_still_frozen() -> None:
    evolved = sample_job().evolve(status=JobStatus.RUNNING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolved.status = JobStatus.QUEUED  # type: ignore[misc]
    assert type(evolved) is Job


def test_evolve_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(TypeError, match="statuss"):
        sample_job().evolve(**typing.cast(JobChanges, {"statuss": JobStatus.RUNNING}))


def test_a_parsed_queue_row_is_what_the_constructor_builds() -> None:
    import orjson

    from coordinator.domain.jobs import QueuedJob
    from coordinator.service.lifecycle import _queued_job

    job = sample_job().evolve(max_price_uait=900)
    row = (job.job_id, job.client_address, job.chain_id, job.model, job.priority.rank,
           orjson.dumps(job.requirements.to_json()).decode(), job.max_price_uait,
           job.estimated_units, job.estimated_cost_uait, job.created_at_ms,
           orjson.dumps(dict(job.extra)).decode(), job.attempts, job.updated_at_ms)  # fmt: skip
    parsed = _queued_job(row)
    constructed = QueuedJob(
        job_id=job.job_id,
        client_address=job.client_address,
        chain_id=job.chain_id,
        model=job.model,
        priority=job.priority,
        requirements=job.requirements,
        max_price_uait=900,
        estimated_units=job.estimated_units,
        estimated_cost_uait=job.estimated_cost_uait,
        created_at_ms=job.created_at_ms,
        units_by_unit={"token": 5},
    )
    assert parsed == constructed and repr(parsed) == repr(constructed)
    assert type(parsed) is QueuedJob
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.model = "gpt2"  # type: ignore[misc]
