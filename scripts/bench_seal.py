"""Time the block sealer's store transaction (docs/benchmarks.md, round 11).

On SQLite the group-commit writer runs on the event loop, so the transaction that stores a
block and stamps its transfers stalls every request while it runs. This builds a SQLite
database holding `--sealed` transfers already in blocks, then `--blocks` times adds 1,000
settled transfers (hold, pay with its signed-receipt JSON, fee), drafts a block of them
with the real sealer and times the write that stores it (and, apart, the draft). Prints
one JSON report.

    .venv/bin/python scripts/bench_seal.py --sealed 200000 --blocks 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from chain.blocks import MAX_ENTRIES_PER_BLOCK
from coordinator.db.database import Database
from coordinator.db.schema import ledger_transfers, receipts
from coordinator.service import blocks
from protocol.keys import generate_private_key

CHAIN = "ait-devnet"
# A receipt and signature of the size the echo runtime's jobs store.
RECEIPT = json.dumps(
    {
        "job_id": "job_" + "a" * 20,
        "chain_id": CHAIN,
        "miner_address": "ait1" + "b" * 40,
        "client_address": "ait1" + "c" * 40,
        "model": "echo",
        "input_sha256": "a" * 64,
        "output_sha256": "b" * 64,
        "units": 16,
        "unit": "byte",
        "price_uait_per_unit": 1,
        "attempt": 1,
        "started_at": "2026-11-23T09:00:00.000Z",
        "completed_at": "2026-11-23T09:00:01.000Z",
        "public_key": "d" * 64,
    }
)
SIGNATURE = json.dumps({"alg": "ed25519", "public_key": "d" * 64, "sig": "e" * 128})


class Transfers:
    """Writes transfers as a job's settlement leaves them: hold, pay (+ receipt), fee."""

    def __init__(self, db: Database, created_at_ms: int) -> None:
        self.db = db
        self.created_at_ms = created_at_ms
        self.seq = 0

    async def add(self, count: int, block_height: int | None) -> None:
        rows: list[dict[str, Any]] = []
        signed: list[dict[str, Any]] = []
        for _ in range(count):
            self.seq += 1
            kind = ("hold", "pay", "fee")[self.seq % 3]
            job_id = f"job{self.seq // 3:08d}"
            rows.append(
                {
                    "transfer_id": f"{kind}:{job_id}",
                    "chain_id": CHAIN,
                    "debit_address": "a" * 44,
                    "debit_kind": "escrow",
                    "credit_address": "b" * 44,
                    "credit_kind": "available",
                    "amount_uait": 1_000,
                    "kind": kind,
                    "job_id": job_id,
                    "hold_id": None,
                    "created_at_ms": self.created_at_ms,
                    "block_height": block_height,
                }
            )
            if kind == "pay":
                signed.append(
                    {
                        "job_id": job_id,
                        "chain_id": CHAIN,
                        "receipt": RECEIPT,
                        "signature": SIGNATURE,
                        "created_at_ms": self.created_at_ms,
                    }
                )

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(insert(ledger_transfers), rows)
            await conn.execute(insert(receipts), signed)

        await self.db.write(op)


async def run(sealed: int, count: int, workdir: Path) -> dict[str, Any]:
    db = await Database.open(f"sqlite:///{workdir / 'seal.db'}")
    key = generate_private_key()
    # Settled a minute ago: no payment waits for its receipt (RECEIPT_WAIT_MS).
    created_at_ms = int(time.time() * 1000) - 60_000
    transfers = Transfers(db, created_at_ms)
    store_ms: list[float] = []
    draft_ms: list[float] = []
    try:
        for height in range(sealed // MAX_ENTRIES_PER_BLOCK):
            # Heights far above the ones timed: these rows have no chain_blocks row.
            await transfers.add(MAX_ENTRIES_PER_BLOCK, 1_000_000 + height)
        for _ in range(count):
            await transfers.add(MAX_ENTRIES_PER_BLOCK, None)
            started = time.perf_counter()
            draft = await blocks.draft_block(db, CHAIN, key, created_at_ms + 1_000)
            draft_ms.append((time.perf_counter() - started) * 1000)
            if draft is None or len(draft.seqs) != MAX_ENTRIES_PER_BLOCK:
                raise SystemExit("bench_seal: the sealer drafted no full block")

            async def store(conn: AsyncConnection, draft: Any = draft) -> Any:
                return await blocks._store_block(conn, CHAIN, draft)

            started = time.perf_counter()
            await db.write(store)
            store_ms.append((time.perf_counter() - started) * 1000)
    finally:
        await db.close()
    # The first store of a size compiles its statement (once per process); reported apart.
    steady = store_ms[1:] or store_ms
    return {
        "sealed_transfers": sealed,
        "entries_per_block": MAX_ENTRIES_PER_BLOCK,
        "blocks_timed": len(steady),
        "store_ms": {
            "median": round(statistics.median(steady), 2),
            "max": round(max(steady), 2),
            "first": round(store_ms[0], 2),
        },
        # Reading, building, hashing and signing a block, the event loop served between
        # slices of entries (so this is CPU spread out, not one stall).
        "draft_ms": {"median": round(statistics.median(draft_ms), 2)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sealed", type=int, default=200_000, help="transfers already sealed")
    parser.add_argument("--blocks", type=int, default=15, help="blocks to store and time")
    args = parser.parse_args(argv)
    if args.sealed < 0 or args.blocks < 1:
        parser.error("--sealed must be >= 0 and --blocks >= 1")
    with tempfile.TemporaryDirectory(prefix="ait-bench-seal-") as workdir:
        report = asyncio.run(run(args.sealed, args.blocks, Path(workdir)))
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
