"""Log lines for the daemons (coordinator, miner): the usual prefix, then the structured
``extra={...}`` fields a call passed, as ``key=value``. Without them a line such as
``job assigned`` would not say which job, or to which miner."""

from __future__ import annotations

import logging
import sys

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # 3.12+
}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD]
        return f"{line} {' '.join(extras)}" if extras else line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that setting up twice (a CLI run in-process again) replaces it."""


def log_to_stderr(level: str) -> None:
    """Send the root logger's records at `level` (debug, info, ...) and above to stderr.
    Raises ValueError for an unknown level name."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(LINE_FORMAT))
    root.addHandler(handler)
