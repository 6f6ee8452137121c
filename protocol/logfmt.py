"""Log lines for the daemons (coordinator, miner): the usual prefix, then the structured
``extra={...}`` fields a call passed, as ``key=value``. Without them a line such as
``job assigned`` would not say which job, or to which miner.

A busy coordinator writes two such lines a job, so a line's cost shows in its throughput
(docs/benchmarks.md, round 19): the time's seconds are formatted once a second, and the
record facts no line shows (caller, thread, process) are not looked up."""

from __future__ import annotations

import logging
import sys
import time

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # 3.12+
}


class KeyValueFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second: int | None = None
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        msec_format = self.default_msec_format
        if datefmt is not None or msec_format is None:
            return super().formatTime(record, datefmt)
        # logging.Formatter's default shape, "%Y-%m-%d %H:%M:%S,mmm": strftime once a second.
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return msec_format % (self._second_text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD]
        return f"{line} {' '.join(extras)}" if extras else line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that setting up twice (a CLI run in-process again) replaces it."""


def log_to_stderr(level: str) -> None:
    """Send the root logger's records at `level` (debug, info, ...) and above to stderr.
    Raises ValueError for an unknown level name.

    Also turns off the record facts that LINE_FORMAT never shows (the calling function,
    thread and process): the logging HOWTO's "Optimization" knobs, process-wide, which is
    why only the daemons' entry points call this."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(LINE_FORMAT))
    root.addHandler(handler)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
