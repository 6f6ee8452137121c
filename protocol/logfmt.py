"""Log lines for the daemons (coordinator, miner): the usual prefix, then the structured
``extra={...}`` fields a call passed, as ``key=value``. Without them a line such as
``job assigned`` would not say which job, or to which miner.

A busy coordinator writes two such lines a job, so a line's cost shows in its throughput
(docs/benchmarks.md, round 19): the time's seconds are formatted once a second, and the
record facts no line shows (caller, thread, process) are not looked up."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from typing import TextIO

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


FLUSH_DELAY_S = 0.05  # the longest a line below WARNING waits to be written
MAX_PENDING_LINES = 1024


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that setting up twice (a CLI run in-process again) replaces it.

    Lines below WARNING are written together, at most FLUSH_DELAY_S after the first of
    them, by a flusher thread: a busy coordinator logs two lines a job, and writing and
    flushing each by itself cost its event loop 3.5% of its CPU a job (docs/benchmarks.md,
    round 29). A WARNING or worse writes what waits and itself at once, in order, as do
    `flush()`, `close()` and logging's shutdown at exit; a process killed outright loses
    at most the last FLUSH_DELAY_S of lines below WARNING."""

    def __init__(self, stream: TextIO, delay_s: float = FLUSH_DELAY_S) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._delay_s = delay_s
        self._due = threading.Event()
        self._closed = False
        self._flusher: threading.Thread | None = None
        _HANDLERS.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        # logging.Handler.handle holds self.lock around this.
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        if (
            record.levelno >= logging.WARNING
            or self._closed
            or len(self._pending) >= MAX_PENDING_LINES
        ):
            self._write_pending()
        elif len(self._pending) == 1:
            self._start_flusher()
            self._due.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            with contextlib.suppress(OSError, ValueError):  # closed: see _write_pending
                super().flush()

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._closed = True
            self._write_pending()
        self._due.set()  # the flusher wakes, sees closed and leaves
        super().close()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: nowhere left to say so
            pass

    def _forget_after_fork(self) -> None:
        # A forked child has the parent's waiting lines, which the parent writes itself.
        self._pending.clear()

    def _start_flusher(self) -> None:
        # (Also after a fork: the child has the object but not the thread.)
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(
                target=self._flush_after_delay, name="ait-log-flush", daemon=True
            )
            self._flusher.start()

    def _flush_after_delay(self) -> None:
        while True:
            self._due.wait()
            if self._closed:
                return
            time.sleep(self._delay_s)
            self._due.clear()  # before writing: a line that comes after sets it again
            self.flush()


_HANDLERS: weakref.WeakSet[_StderrHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_HANDLERS):
        handler._forget_after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
        old.close()
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(LINE_FORMAT))
    root.addHandler(handler)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
