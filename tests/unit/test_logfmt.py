"""The daemons' log lines carry the fields a call passed in `extra=`."""

from __future__ import annotations

import logging

from protocol.logfmt import LINE_FORMAT, KeyValueFormatter


def _record(extra: dict[str, object] | None = None) -> logging.LogRecord:
    logger = logging.getLogger("coordinator.hub.dispatcher")
    record = logger.makeRecord(logger.name, logging.INFO, "f.py", 1, "job %s", ("assigned",),
                               None, extra=extra)  # fmt: skip
    record.created = 0.0
    return record


def test_extra_fields_follow_the_message_as_key_value() -> None:
    line = KeyValueFormatter(LINE_FORMAT).format(
        _record({"job_id": "job_1", "miner_id": "miner_a", "attempt": 2})
    )
    assert line.endswith(
        "INFO coordinator.hub.dispatcher: job assigned job_id=job_1 miner_id=miner_a attempt=2"
    )


def test_a_line_without_extra_fields_is_the_plain_format() -> None:
    record = _record()
    assert KeyValueFormatter(LINE_FORMAT).format(record) == logging.Formatter(LINE_FORMAT).format(
        record
    )


def test_the_time_is_the_default_shape_as_the_seconds_change_and_come_back() -> None:
    # The formatter keeps the last second's text: a record of another second must not
    # reuse it, and one logged late (an earlier second) must not either.
    ours, stdlib = KeyValueFormatter(LINE_FORMAT), logging.Formatter(LINE_FORMAT)
    for created in (0.5, 0.999, 1.0, 1.25, 86_400.007, 0.004):
        record = _record()
        record.created, record.msecs = created, (created - int(created)) * 1000 // 1
        assert ours.format(record) == stdlib.format(record)
