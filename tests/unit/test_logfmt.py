"""The daemons' log lines carry the fields a call passed in `extra=`."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO

import pytest

from protocol.logfmt import LINE_FORMAT, KeyValueFormatter, _StderrHandler


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


# -- the daemons' stderr handler: lines below WARNING written together ------------------
def _handler(stream: TextIO, delay_s: float) -> logging.Handler:
    handler = _StderrHandler(stream, delay_s)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return handler


def _log(handler: logging.Handler, level: int, message: str) -> None:
    handler.handle(logging.LogRecord("t", level, "f.py", 1, message, None, None))


def test_info_lines_wait_and_a_warning_writes_them_first_in_order() -> None:
    stream = io.StringIO()
    handler = _handler(stream, delay_s=3600)  # the flusher will not write in this test
    try:
        _log(handler, logging.INFO, "one")
        _log(handler, logging.DEBUG, "two")
        assert stream.getvalue() == ""
        _log(handler, logging.WARNING, "three")
        assert stream.getvalue() == "INFO one\nDEBUG two\nWARNING three\n"
        _log(handler, logging.INFO, "four")
        handler.flush()
        assert stream.getvalue().endswith("WARNING three\nINFO four\n")
    finally:
        handler.close()


def _holding(message: str) -> tuple[io.StringIO, logging.Handler]:
    """A handler whose flusher will not write in a test, holding one INFO line."""
    stream = io.StringIO()
    handler = _handler(stream, delay_s=3600)
    _log(handler, logging.INFO, message)
    return stream, handler


def test_close_writes_what_waits_and_later_lines_go_straight_out() -> None:
    stream, handler = _holding("pending")
    handler.close()
    assert stream.getvalue() == "INFO pending\n"
    _log(handler, logging.INFO, "after close")  # a late record is not kept back
    assert stream.getvalue() == "INFO pending\nINFO after close\n"


def test_the_flusher_writes_waiting_lines_by_itself() -> None:
    stream = io.StringIO()
    handler = _handler(stream, delay_s=0.01)
    try:
        for round_ in range(3):  # each round's lines wait for the flusher alone
            _log(handler, logging.INFO, f"line {round_}")
            for _ in range(500):  # bounded: 5 s at most
                if f"line {round_}\n" in stream.getvalue():
                    break
                time.sleep(0.01)
        assert stream.getvalue() == "INFO line 0\nINFO line 1\nINFO line 2\n"
    finally:
        handler.close()


def test_a_closed_stream_loses_lines_quietly() -> None:
    stream, handler = _holding("lost")
    stream.close()
    handler.flush()  # no ValueError out of logging
    handler.close()


def test_a_daemon_that_exits_has_written_every_line() -> None:
    # logging's shutdown at exit flushes the handler: nothing logged is lost on the way out.
    script = (
        "import logging\n"
        "from protocol.logfmt import log_to_stderr\n"
        "log_to_stderr('info')\n"
        "for i in range(2000):\n"
        "    logging.getLogger('coordinator').info('job %d', i)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 2000
    assert lines[0].endswith("INFO coordinator: job 0")
    assert lines[-1].endswith("INFO coordinator: job 1999")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_does_not_write_its_parents_waiting_lines(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("w") as stream:
        handler = _handler(stream, delay_s=3600)
        try:
            _log(handler, logging.INFO, "parent waits")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
                pid = os.fork()
            if pid == 0:  # the child: a warning writes what waits in *its* handler
                _log(handler, logging.WARNING, "child")
                os._exit(0)
            assert os.waitpid(pid, 0)[1] == 0
            handler.flush()
        finally:
            handler.close()
    assert sorted(path.read_text().splitlines()) == ["INFO parent waits", "WARNING child"]
