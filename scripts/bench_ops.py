"""The coordinator's write path in one process, the same work on every run
(docs/benchmarks.md, round 22).

`scripts/bench` measures the whole market, but on a shared host its CPU figures drift by
half from one minute to the next, which hides changes of a few percent. This drives the
service functions the API and the miner hub call, on a SQLite file, with no network and
no timing in the loop: `--rounds` times, a client submits a batch of `--batch` jobs
(`submit_batch`: escrow holds, job rows), a miner claims them (`claim_job`, coalesced
into one `claim_many`), returns a signed result for each (`complete_job`: receipt checks,
settlement, coalesced into one `complete_many`; each claim and result given the job as
admitted and as leased, as the hub gives them, round 31), and every `--seal-every` rounds the
sealer seals what was settled (with `--seal-helper`, blocks drafted by the seal helper
process, as a busy coordinator's are). Prints one JSON report: thread CPU per job by
phase.

Its work per job is fixed by its arguments, so instruction counts are repeatable: under
`valgrind --tool=callgrind`, two runs that differ only in `--rounds` give the
instructions a job costs as (I2 - I1) / (jobs2 - jobs1), start-up cancelling out.

    .venv/bin/python scripts/bench_ops.py --rounds 40
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \\
        .venv/bin/python scripts/bench_ops.py --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from chain import store as ledger_store
from chain.ledger import Result
from chain.receipts import build_receipt, sign_receipt
from coordinator.bus import JobBus
from coordinator.db.database import Database
from coordinator.domain.jobs import Job, Priority, Requirements
from coordinator.metrics import Metrics
from coordinator.service import blocks, lifecycle
from coordinator.service import jobs as job_service
from coordinator.service.core import Core
from coordinator.service.jobstate import MinerIdentity, Outcome
from coordinator.service.keys import authenticate, create_key
from coordinator.service.seal_worker import SealWorker
from coordinator.service.sealer import Sealer
from coordinator.settings import Settings
from protocol.gc_tuning import tune_gc_after_startup
from protocol.keys import (
    generate_private_key,
    load_or_create_key_file,
    miner_id_from_public_key,
    public_key_bytes,
    public_key_hex,
)
from protocol.timefmt import iso_ms, now_ms

T = TypeVar("T")
CHAIN = "ait-devnet"
PRICE = 1  # micro-AIT a unit: every claim fits the estimate (no escrow top-up)
OUTPUT = b'{"text": "hello"}'


async def _timed(spent: dict[str, float], phase: str, work: Awaitable[T]) -> T:
    started = time.thread_time()
    try:
        return await work
    finally:
        spent[phase] = spent.get(phase, 0.0) + time.thread_time() - started


def _request(index: int) -> job_service.JobRequest:
    return job_service.JobRequest(
        model="echo",
        input={"text": f"job {index}"},
        chain_id=CHAIN,
        priority=Priority.NORMAL,
        requirements=Requirements(),
        params={},
        output_config={},
        timeout_seconds=600,
        max_price_uait=1_000_000,
        name=None,
        fail_if_unmatched=False,
    )


class _Miner:
    def __init__(self, address: str) -> None:
        self.key = generate_private_key()
        public_key = public_key_hex(self.key)
        miner_id = miner_id_from_public_key(public_key_bytes(self.key))
        self.identity = MinerIdentity(miner_id, address, public_key)

    def result(self, job: Job) -> tuple[dict[str, Any], dict[str, str]]:
        receipt = build_receipt(
            job_id=job.job_id,
            chain_id=job.chain_id,
            miner_address=self.identity.address,
            client_address=job.client_address,
            model=job.model,
            input_sha256=job.input_sha256,
            output_sha256=hashlib.sha256(OUTPUT).hexdigest(),
            units=len(OUTPUT),
            unit="token",
            price_uait_per_unit=PRICE,
            attempt=job.attempts,
            started_at=iso_ms(job.started_at_ms) or "",
            completed_at=iso_ms(now_ms()) or "",
            public_key=self.identity.public_key,
        )
        return receipt, sign_receipt(self.key, receipt)


async def _round(
    core: Core, client: Any, miner: _Miner, batch: int, first: int, spent: dict[str, float]
) -> None:
    reqs = [_request(first + i) for i in range(batch)]
    submitted = await _timed(spent, "submit", job_service.submit_batch(core, None, client, reqs))
    claims = [  # each with the job as admitted, as the hub's dispatcher passes it (round 31)
        lifecycle.claim_job(core, job.job_id, miner.identity, PRICE, "token", queued=job)
        for job in submitted
    ]
    claimed = await _timed(spent, "claim", asyncio.gather(*claims))
    signed = [(job, *miner.result(job)) for job in claimed if job is not None]
    if len(signed) != batch:
        raise SystemExit(f"bench_ops: {batch - len(signed)} of {batch} jobs were not claimed")
    completions = [
        lifecycle.complete_job(
            core,
            job.job_id,
            miner.identity.miner_id,
            receipt=receipt,
            signature=signature,
            output=OUTPUT,
            content_type="application/json",
            filename="output.json",
            summary={},
            leased=job,  # as the hub passes it: the job as its claim leased it (round 31)
        )
        for job, receipt, signature in signed
    ]
    changes = await _timed(spent, "complete", asyncio.gather(*completions))
    if any(change.outcome != Outcome.OK for change in changes):
        raise SystemExit(f"bench_ops: a result was refused: {changes[0]}")


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ready_helper(sealer: Sealer) -> SealWorker:
    deadline = time.monotonic() + 60
    while (helper := sealer.helper) is None:
        if time.monotonic() > deadline:
            raise SystemExit("bench_ops: the seal helper did not start within 60 s")
        await asyncio.sleep(0.05)
    return helper


async def run(
    rounds: int, batch: int, seal_every: int, workdir: Path, *, seal_helper: bool = False
) -> dict[str, Any]:
    settings = Settings(data_dir=workdir, fee_bps=500)
    db = await Database.open(settings.db_url)
    core = Core(settings, db, JobBus())
    key = core.settings.key_path
    stack = contextlib.AsyncExitStack()
    try:
        api_key, record, _ = await create_key(db, "client", None, None, workdir)
        client = await authenticate(db, api_key)
        if client is None:
            raise SystemExit("bench_ops: the client key does not authenticate")
        _, miner_record, _ = await create_key(db, "miner", None, None, workdir)
        miner = _Miner(miner_record.address)
        await lifecycle.upsert_miner(core, miner.identity, {})

        async def fund(conn: Any) -> Result:
            amount = 1_000_000 * rounds * batch
            return await ledger_store.mint(conn, "mint:bench", CHAIN, record.address, amount, 0)

        if await db.write(fund) != Result.CREATED:
            raise SystemExit("bench_ops: the client could not be funded")
        coordinator_key = load_or_create_key_file(key)
        drafter: blocks.Drafter | None = None
        metrics = Metrics()  # blocks drafted, by where (the Sealer's; --seal-helper)
        helper_pid = None
        if seal_helper:
            # Every block drafted by the helper process, started (and the funding's block
            # sealed) before the measured rounds, as a busy coordinator's would be.
            sealer = Sealer(db, coordinator_key, metrics, helper_min_entries=1)
            stack.push_async_callback(sealer.close)
            await blocks.seal_pending(db, CHAIN, coordinator_key, sealer.draft)
            helper_pid = (await _ready_helper(sealer)).pid
            drafter = sealer.draft
        tune_gc_after_startup()  # as `coordinator serve` does once it is up
        spent: dict[str, float] = {}
        sealed = 0
        helper_before = _process_cpu_s(helper_pid) if helper_pid else 0.0
        metrics.blocks_drafted.clear()  # the warm-up's
        started = time.thread_time()
        for index in range(rounds):
            await _round(core, client, miner, batch, index * batch, spent)
            if (index + 1) % seal_every == 0:
                sealing = blocks.seal_pending(db, CHAIN, coordinator_key, drafter)
                sealed += await _timed(spent, "seal", sealing)
        total = time.thread_time() - started
        helper_cpu_s = _process_cpu_s(helper_pid) - helper_before if helper_pid else 0.0
        async with db.read() as conn:
            paid = await ledger_store.balance(conn, CHAIN, miner.identity.address)
    finally:
        await stack.aclose()
        await db.close()
    jobs = rounds * batch
    return {
        "jobs": jobs,
        "batch": batch,
        "seal_every": seal_every,
        "blocks_sealed": sealed,
        "miner_paid_uait": paid.available_uait,
        "cpu_us_per_job": {
            "all": round(total / jobs * 1e6, 1),
            **{phase: round(seconds / jobs * 1e6, 1) for phase, seconds in spent.items()},
        },
        # The seal helper's process CPU (--seal-helper; /proc's ticks: coarse on short runs).
        "blocks_drafted_by_helper": metrics.blocks_drafted["helper"],
        "seal_helper_cpu_us_per_job": round(helper_cpu_s / jobs * 1e6, 1) if seal_helper else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="batches submitted and settled")
    parser.add_argument("--batch", type=int, default=25, help="jobs a batch (1-100)")
    parser.add_argument("--seal-every", type=int, default=4, help="rounds between seals")
    parser.add_argument(
        "--seal-helper",
        action="store_true",
        help="draft blocks in the seal helper process, as a busy coordinator does",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or not 1 <= args.batch <= 100 or args.seal_every < 1:
        parser.error("--rounds and --seal-every must be >= 1, --batch 1-100")
    with tempfile.TemporaryDirectory(prefix="ait-bench-ops-") as workdir:
        report = asyncio.run(
            run(
                args.rounds,
                args.batch,
                args.seal_every,
                Path(workdir),
                seal_helper=args.seal_helper,
            )
        )
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
