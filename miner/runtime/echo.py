"""echo: returns its input unchanged; for protocol tests and load tests.

Unit: byte (of the output). A JSON input comes back as compact JSON
(``application/json``, ``output.json``); a file input comes back byte for byte
(``application/octet-stream``, ``output.bin``). Params, all optional and bounded:

- ``delay_ms`` (0-600000): run this long, in small steps that report progress and honour
  cancel, so tests can catch a job mid-run;
- ``fail`` (string): fail the job with this message (exercises the failure path).

It imports no torch and loads nothing; only miners whose config has a ``[[models]]``
entry with ``runtime = "echo"`` serve it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from miner.runtime.base import JobContext, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.params import check_cancelled, check_known, require_int

PARAMS = ("delay_ms", "fail")
MAX_DELAY_MS = 600_000
STEP_S = 0.05  # cancel latency and progress granularity


class EchoRuntime:
    name = "echo"
    default_unit = "byte"

    def load(self, spec: ModelSpec, device: str) -> Any:
        return None  # nothing to load

    def run(self, model: Any, spec: ModelSpec, ctx: JobContext) -> RuntimeResult:
        check_known(ctx.params, PARAMS, self.name)
        delay_ms = require_int(ctx.params, "delay_ms", 0, 0, MAX_DELAY_MS)
        fail = ctx.params.get("fail")
        if fail is not None and not isinstance(fail, str):
            raise JobFailed("param fail must be a string")
        _wait(ctx, delay_ms / 1000)
        if fail is not None:
            raise JobFailed(fail or "failed on request (param fail)")
        if isinstance(ctx.input, bytes | bytearray):
            output, content_type, filename = (
                bytes(ctx.input),
                "application/octet-stream",
                "output.bin",
            )
        else:
            text = json.dumps(ctx.input, separators=(",", ":"), ensure_ascii=False)
            output, content_type, filename = text.encode("utf-8"), "application/json", "output.json"
        ctx.report_progress(100, None)
        return RuntimeResult(
            output_bytes=output,
            content_type=content_type,
            filename=filename,
            units=len(output),
            summary={"bytes": len(output), "delay_ms": delay_ms},
        )


def _wait(ctx: JobContext, seconds: float) -> None:
    """Sleep in steps, reporting whole-percent progress and stopping on cancel."""
    start = time.monotonic()
    last = -1
    while True:
        check_cancelled(ctx)
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            return
        percent = int(99 * elapsed / seconds)
        if percent != last:
            ctx.report_progress(percent, "echoing")
            last = percent
        ctx.cancelled.wait(min(STEP_S, seconds - elapsed))


RUNTIME = EchoRuntime()
