"""Runs assigned jobs in worker threads and turns each into a signed ``Result`` or a ``Failed``.

The event loop never runs job code: ``start`` hands the runtime to a thread pool sized to
``max_concurrency``, so heartbeats and cancels keep flowing while a job computes. Progress
reported from the thread is coalesced (latest value per job) and handed to the loop.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from chain.receipts import build_receipt, sign_receipt
from miner.identity import Identity
from miner.runtime.base import JobCancelled, JobContext, JobFailed, ModelSpec, RuntimeResult
from miner.runtime.registry import ModelCache, run_job
from miner.scratch import remove_stale_job_dirs
from protocol.canonical import sha256_hex
from protocol.limits import MAX_OUTPUT_BYTES, MAX_SUMMARY_BYTES
from protocol.messages import Assign, Failed, ProtocolError, Result, encode
from protocol.timefmt import iso_ms, now_ms

log = logging.getLogger(__name__)

ProgressSink = Callable[[str, int, str | None], None]


@dataclass
class RunningJob:
    assign: Assign
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None
    started_ms: int = field(default_factory=now_ms)
    task: asyncio.Task[Result | Failed | None] | None = None


class Worker:
    def __init__(
        self,
        identity: Identity,
        models: tuple[ModelSpec, ...],
        device: str,
        work_dir: Path,
        max_concurrency: int,
        cache: ModelCache | None = None,
    ) -> None:
        self.identity = identity
        self.models = {m.name: m for m in models}
        self.device = device
        self.work_dir = work_dir
        self.max_concurrency = max_concurrency
        self.cache = cache or ModelCache()
        self.running: dict[str, RunningJob] = {}
        # job id -> wall-clock time after which its deadline has surely passed (scratch.py)
        self.dir_expires: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="ait-job")

    def start(
        self, assign: Assign, address: Callable[[], str], on_progress: ProgressSink
    ) -> asyncio.Task[Result | Failed | None]:
        """Run ``assign`` in a thread; the task answers the message to send, or None when
        the job was cancelled (the coordinator already knows)."""
        job = RunningJob(assign)
        self.running[assign.job_id] = job
        self.dir_expires[assign.job_id] = time.time() + assign.timeout_s
        task = asyncio.get_running_loop().create_task(self._run(job, address, on_progress))
        job.task = task
        return task

    def job_dir(self, job_id: str) -> Path | None:
        """The job's scratch dir (not created: the runtime that needs one makes it); None
        for the ids `.` and `..`, which the wire's id pattern admits but name no child."""
        return None if job_id in (".", "..") else self.work_dir / job_id

    def discard_job_dir(self, job_id: str) -> None:
        """Remove a finished job's scratch dir (checkpoints are only for a job that comes
        back); before, every job left an empty dir behind."""
        target = self.job_dir(job_id)
        if target is not None and job_id not in self.running:
            shutil.rmtree(target, ignore_errors=True)
            self.dir_expires.pop(job_id, None)

    async def prune_job_dirs(self) -> list[str]:
        """Remove the scratch dirs of cancelled, failed or lost jobs once no assignment can
        bring them back (miner/scratch.py), off the loop; the job ids whose dirs went."""
        now = time.time()
        expires = dict(self.dir_expires)
        removed = await asyncio.to_thread(
            remove_stale_job_dirs, self.work_dir, frozenset(self.running), expires, now
        )
        for job_id, at in expires.items():
            if at <= now and job_id not in self.running:
                self.dir_expires.pop(job_id, None)
        return removed

    def cancel(self, job_id: str, reason: str) -> bool:
        job = self.running.get(job_id)
        if job is None:
            return False
        job.cancel_reason = reason
        job.cancelled.set()
        return True

    def cancel_all(self, reason: str) -> list[str]:
        ids = list(self.running)
        for job_id in ids:
            self.cancel(job_id, reason)
        return ids

    def shutdown(self) -> None:
        self.cancel_all("miner shutting down")
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(
        self, job: RunningJob, address: Callable[[], str], on_progress: ProgressSink
    ) -> Result | Failed | None:
        a = job.assign
        loop = asyncio.get_running_loop()
        try:
            spec = self.models.get(a.model)
            if spec is None:
                return Failed(a.job_id, f"model {a.model} is not served by this miner", True)
            data = a.input_bytes()
            if sha256_hex(data) != a.input_sha256:
                return Failed(a.job_id, "input does not match its input_sha256", True)
            try:
                job_input = _decode_input(a, data)
            except JobFailed as exc:
                return Failed(a.job_id, str(exc), False)

            def progress(percent: int, message: str | None) -> None:
                # Called from the job thread: hop onto the loop, clamp to 0..99 until done.
                value = max(0, min(99, int(percent)))
                loop.call_soon_threadsafe(on_progress, a.job_id, value, message)

            work_dir = self.job_dir(a.job_id)
            if work_dir is None:
                return Failed(a.job_id, f"job id {a.job_id!r} cannot name a work dir", False)
            ctx = JobContext(
                job_id=a.job_id,
                input=job_input,
                params=dict(a.params),
                device=self.device,
                work_dir=work_dir,
                report_progress=progress,
                cancelled=job.cancelled,
            )
            try:
                out = await loop.run_in_executor(self._pool, run_job, spec, ctx, self.cache)
            except JobCancelled:
                return None
            except JobFailed as exc:
                if job.cancelled.is_set():
                    return None
                return Failed(a.job_id, str(exc) or "job failed", False)
            except Exception as exc:  # a runtime bug: another miner may do better
                log.exception("runtime crashed", extra={"job_id": a.job_id})
                return Failed(a.job_id, f"miner runtime error: {type(exc).__name__}: {exc}", True)
            if job.cancelled.is_set():
                return None
            return self._result(job, spec, out, address())
        finally:
            self.running.pop(a.job_id, None)

    def _result(
        self, job: RunningJob, spec: ModelSpec, out: RuntimeResult, address: str
    ) -> Result | Failed:
        a = job.assign
        if len(out.output_bytes) > MAX_OUTPUT_BYTES:
            return Failed(a.job_id, f"output is larger than {MAX_OUTPUT_BYTES} bytes", False)
        summary = _summary_json(out.summary)
        receipt = build_receipt(
            job_id=a.job_id,
            chain_id=a.chain_id,
            miner_address=address,
            client_address=a.client_address,
            model=a.model,
            input_sha256=a.input_sha256,
            output_sha256=sha256_hex(out.output_bytes),
            units=int(out.units),
            unit=spec.unit,
            price_uait_per_unit=spec.price_uait_per_unit,
            attempt=a.attempt,
            started_at=_iso(job.started_ms),
            completed_at=_iso(now_ms()),
            public_key=self.identity.public_key,
        )
        result = Result(
            job_id=a.job_id,
            receipt=receipt,
            signature=sign_receipt(self.identity.private_key, receipt),
            output_b64="",
            content_type=out.content_type,
            filename=out.filename,
            summary=summary,
        )
        # Everything but the output (checked above; base64 made here): the daemon sends
        # the result without parsing it back (miner.daemon._wire_text).
        try:
            encode(result)
        except ProtocolError as exc:
            return Failed(a.job_id, f"the runtime's result does not fit the protocol: {exc}", False)
        return dataclasses.replace(
            result, output_b64=base64.b64encode(out.output_bytes).decode("ascii")
        )


def _summary_json(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime's summary as the JSON object the result carries: values JSON lacks
    become strings; one too large for the protocol is replaced by a note."""
    try:
        text = orjson.dumps(dict(summary), default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return {"note": "summary is not JSON; dropped"}
    if len(text) > MAX_SUMMARY_BYTES:
        return {"note": "summary too large; dropped"}
    loaded: dict[str, Any] = orjson.loads(text)
    return loaded


def _iso(ms: int) -> str:
    text = iso_ms(ms)
    assert text is not None
    return text


def _decode_input(a: Assign, data: bytes) -> Any:
    """JSON inputs reach the runtime decoded; file inputs as bytes."""
    if a.input_kind == "file":
        return data
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        raise JobFailed("input is not valid JSON") from None
