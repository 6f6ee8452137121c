"""A batch's UPDATE parameters built from a job (`row_params`) are those `update_params`
builds from the same values: the claim and completion batches write what they did."""

from __future__ import annotations

import pytest
from ait_harness import sample_job

from coordinator.service.jobstate import row_params, update_params


def test_row_params_are_update_params_of_the_jobs_fields_and_the_stored_forms() -> None:
    job = sample_job().evolve(miner_id="miner_1", attempts=2, progress=40)
    columns = ("status", "miner_id", "attempts", "progress", "extra", "output")

    params = row_params(job, columns, status="running", extra="{}", output=b"out")

    assert params == update_params(
        "job_1",
        {
            "status": "running",
            "miner_id": "miner_1",
            "attempts": 2,
            "progress": 40,
            "extra": "{}",
            "output": b"out",
        },
    )


def test_a_column_that_is_neither_a_field_nor_given_is_refused() -> None:
    with pytest.raises(KeyError, match="output"):
        row_params(sample_job(), ("status", "output"), status="queued")
