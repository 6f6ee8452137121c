"""The block sealer against real SQLite files and the real PostgreSQL server.

Transfers are written as rows of `ledger_transfers` (what chain.store writes), then the
sealer runs and the resulting blocks are read back and audited with verify_chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy import select

from chain import store
from chain.blocks import MAX_ENTRIES_PER_BLOCK
from chain.ledger import TREASURY_ADDRESS, Result
from chain.merkle import verify_proof
from chain.receipts import build_receipt, sign_receipt
from chain.verify import verify_chain
from coordinator.db.database import Database
from coordinator.db.schema import chain_blocks, ledger_transfers, receipts
from coordinator.metrics import Metrics
from coordinator.service import block_reads
from coordinator.service import blocks as sealer
from coordinator.service.block_reads import chain_gauges, chain_height, get_blocks
from coordinator.service.blocks import (
    RECEIPT_WAIT_MS,
    ForeignSigner,
    SealRace,
    _store_block,
    draft_block,
    receipt_block,
    seal_pending,
)
from coordinator.service.seal_worker import HELPER_NICENESS, SealWorker, SealWorkerFailed
from coordinator.service.sealer import Sealer
from coordinator.settings import Settings
from protocol.canonical import canonical_bytes
from protocol.keys import address_of, generate_private_key, public_key_hex
from protocol.timefmt import now_ms

CHAIN = "ait-devnet"
FEE_BPS = 200
COORDINATOR = generate_private_key()
PUB = public_key_hex(COORDINATOR)
MINER = generate_private_key()
MINER_ADDRESS = address_of(generate_private_key())
CLIENT_ADDRESS = address_of(generate_private_key())
PG_HOST, PG_PORT = "127.0.0.1", 5432


async def _pg_reachable() -> bool:
    try:
        conn = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", database="postgres", timeout=3
        )
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(params=["sqlite", "postgresql"])
async def chain_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'chain.db'}"
        return
    if not await _pg_reachable():
        if os.environ.get("AIT_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required but unreachable")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is unreachable")
    name = "ait_chain_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(chain_db_url: str) -> AsyncIterator[Database]:
    database = await Database.open(chain_db_url)
    try:
        yield database
    finally:
        await database.close()


async def _mint(db: Database, n: int, amount: int = 1_000_000, chain: str = CHAIN) -> None:
    async def op(conn: Any) -> Any:
        return await store.mint(conn, f"mint:{n}", chain, CLIENT_ADDRESS, amount, now_ms())

    assert await db.write(op) == Result.CREATED


def _receipt_row(job_id: str, units: int, price: int) -> dict[str, Any]:
    receipt = build_receipt(
        job_id=job_id,
        chain_id=CHAIN,
        miner_address=MINER_ADDRESS,
        client_address=CLIENT_ADDRESS,
        model="echo",
        input_sha256="a" * 64,
        output_sha256="b" * 64,
        units=units,
        unit="byte",
        price_uait_per_unit=price,
        attempt=1,
        started_at="2026-11-23T09:00:00.000Z",
        completed_at="2026-11-23T09:00:01.000Z",
        public_key=public_key_hex(MINER),
    )
    return {
        "job_id": job_id,
        "chain_id": CHAIN,
        "receipt": json.dumps(receipt),
        "signature": json.dumps(sign_receipt(MINER, receipt)),
        "created_at_ms": now_ms(),
    }


async def _job(
    db: Database,
    job_id: str,
    held: int,
    units: int,
    price: int,
    *,
    with_receipt: bool = True,
    settled_at_ms: int | None = None,
) -> None:
    """Hold, then settle with chain.store, storing the receipt in the same transaction
    (as the coordinator does when a miner's result is accepted)."""

    async def op(conn: Any) -> None:
        assert await store.hold(conn, job_id, CHAIN, CLIENT_ADDRESS, held, now_ms()) == (
            Result.CREATED
        )
        when = now_ms() if settled_at_ms is None else settled_at_ms
        settlement = await store.post(conn, job_id, MINER_ADDRESS, units * price, FEE_BPS, when)
        assert settlement.result == Result.CREATED
        if with_receipt:
            await conn.execute(receipts.insert().values(**_receipt_row(job_id, units, price)))

    await db.write(op)


async def _add_receipt(db: Database, job_id: str, units: int, price: int) -> None:
    async def op(conn: Any) -> None:
        await conn.execute(receipts.insert().values(**_receipt_row(job_id, units, price)))

    await db.write(op)


async def _live(db: Database) -> dict[str, dict[str, int]]:
    live: dict[str, dict[str, int]] = {}
    async with db.read() as conn:
        for address in (CLIENT_ADDRESS, MINER_ADDRESS, TREASURY_ADDRESS):
            balance = await store.balance(conn, CHAIN, address)
            live[address] = {"available": balance.available_uait, "held": balance.held_uait}
    return live


async def _all_blocks(db: Database) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    while True:
        page = await get_blocks(db, CHAIN, from_height=len(blocks), limit=100)
        if not page:
            return blocks
        blocks.extend(page)


async def test_seal_mints_jobs_and_receipts(db: Database) -> None:
    assert await seal_pending(db, CHAIN, COORDINATOR) == 0
    assert await chain_height(db, CHAIN) is None
    for n in range(3):
        await _mint(db, n)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    await _job(db, "job_1", held=500_000, units=12, price=10_000)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    assert await seal_pending(db, CHAIN, COORDINATOR) == 0  # nothing left: no empty blocks
    assert await chain_height(db, CHAIN) == 1

    blocks = await _all_blocks(db)
    assert [b["header"]["height"] for b in blocks] == [0, 1]
    kinds = [(e["kind"], e["amount_uait"]) for e in blocks[1]["entries"]]
    # 2% fee out of the 120_000 charge; the rest of the hold goes back.
    assert kinds == [("hold", 500_000), ("pay", 117_600), ("fee", 2_400), ("refund", 380_000)]
    assert blocks[1]["entries"][1]["receipt"]["job_id"] == "job_1"
    live = await _live(db)
    assert live[MINER_ADDRESS]["available"] == 117_600
    report = verify_chain(blocks, PUB, live, chain_id=CHAIN)
    assert report.ok, [str(f) for f in report.failures]
    assert report.minted_uait == 3_000_000
    assert report.balances_compared == 6

    # Every transfer is stamped with its block; the receipt's is its payment's.
    async with db.read() as conn:
        rows = await conn.execute(
            select(ledger_transfers.c.transfer_id, ledger_transfers.c.block_height)
        )
        heights = {r.transfer_id: r.block_height for r in rows}
    assert set(heights.values()) == {0, 1}
    assert heights["pay:job_1"] == 1 and heights["mint:0"] == 0

    where = await receipt_block(db, "job_1")
    assert where is not None
    assert (where["chain_id"], where["height"]) == (CHAIN, 1)
    assert where["entry"]["receipt"]["job_id"] == "job_1"
    assert where["merkle_root"] == blocks[1]["header"]["merkle_root"]
    assert verify_proof(where["entry"], where["merkle_proof"], blocks[1]["header"]["merkle_root"])
    assert await receipt_block(db, "job_unknown") is None
    # Other chains are independent.
    assert await get_blocks(db, "ait-testnet") == []


async def test_a_page_of_blocks_stops_at_its_entry_budget(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page holds whole blocks up to MAX_ENTRIES_PER_PAGE entries (a first block over it
    comes alone), and the entries answered as stored are the entries parsed."""
    for n in range(5):  # blocks of 1, 4, 1, 4 and 1 entries
        if n % 2:
            await _job(db, f"job_{n}", held=500_000, units=12, price=10_000)
        else:
            await _mint(db, n)
        assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    monkeypatch.setattr(block_reads, "MAX_ENTRIES_PER_PAGE", 5)
    pages: list[list[dict[str, Any]]] = []
    read = 0
    while read < 5:
        pages.append(await get_blocks(db, CHAIN, from_height=read, limit=100))
        read += len(pages[-1])
    assert [[b["header"]["height"] for b in page] for page in pages] == [[0, 1], [2, 3], [4]]
    stored = await get_blocks(db, CHAIN, limit=2, entries_as_stored=True)
    parsed = await get_blocks(db, CHAIN, limit=2)
    assert all(isinstance(b["entries"], orjson.Fragment) for b in stored)
    assert orjson.loads(orjson.dumps(stored)) == parsed
    # As stored (and so as a page answers them), a block's entries are the canonical bytes
    # its leaves hash, not a second encoding of them.
    async with db.read() as conn:
        bodies = (await conn.execute(select(chain_blocks.c.body))).scalars().all()
    for body in bodies:
        canonical = [canonical_bytes(entry) for entry in orjson.loads(body)]
        assert body.encode() == b"[" + b",".join(canonical) + b"]"
    assert [len(b["entries"]) for b in parsed] == [1, 4]
    monkeypatch.setattr(block_reads, "MAX_ENTRIES_PER_PAGE", 3)
    assert [b["header"]["height"] for b in await get_blocks(db, CHAIN, 1)] == [1]


async def test_receipt_proofs_of_one_block_agree_however_often_asked(db: Database) -> None:
    """Proofs come from a block parsed once for them (kept among the recent few): each
    job's proof verifies against its block's root, and asking again answers the same."""
    await _mint(db, 0, amount=10_000_000)
    for n in range(5):
        await _job(db, f"job_{n}", held=500_000, units=12, price=10_000)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    root = (await get_blocks(db, CHAIN))[0]["header"]["merkle_root"]
    first = [await receipt_block(db, f"job_{n}") for n in range(5)]
    for n, where in enumerate(first):
        assert where is not None and where["entry"]["job_id"] == f"job_{n}"
        assert where["merkle_root"] == root
        assert verify_proof(where["entry"], where["merkle_proof"], root)
    assert len({where["entry_index"] for where in first if where}) == 5
    assert [await receipt_block(db, f"job_{n}") for n in range(5)] == first


async def test_payment_waits_for_its_receipt(db: Database) -> None:
    await _mint(db, 0)
    await _job(db, "job_2", held=300_000, units=10, price=10_000, with_receipt=False)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    blocks = await _all_blocks(db)
    # The block ends before the payment whose receipt is not stored yet.
    assert [e["transfer_id"] for e in blocks[0]["entries"]] == ["mint:0", "hold:job_2"]
    assert await receipt_block(db, "job_2") is None
    await _add_receipt(db, "job_2", 10, 10_000)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    blocks = await _all_blocks(db)
    assert [e["kind"] for e in blocks[1]["entries"]] == ["pay", "fee", "refund"]
    assert verify_chain(blocks, PUB, await _live(db)).ok
    assert (await receipt_block(db, "job_2") or {}).get("height") == 1


async def test_pending_transfers_are_read_a_page_at_a_time(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages smaller than a block: each block still takes the transfers in seq order, across
    pages, up to its size, and a payment still waiting for its receipt on a later page ends
    the block before it."""
    monkeypatch.setattr(sealer, "PENDING_PAGE", 2)
    monkeypatch.setattr(sealer, "MAX_ENTRIES_PER_BLOCK", 5)
    await _mint(db, 0)
    for n in range(3):  # hold, pay, fee, refund each
        await _job(db, f"job_{n}", held=300_000, units=10, price=10_000)
    await _job(db, "job_late", held=300_000, units=10, price=10_000, with_receipt=False)
    async with db.read() as conn:
        rows = await conn.execute(
            select(ledger_transfers.c.transfer_id).order_by(ledger_transfers.c.seq)
        )
        in_seq_order = [r.transfer_id for r in rows]
    assert await seal_pending(db, CHAIN, COORDINATOR) == 3  # 5 + 5 + 4: full, full, the rest
    blocks = await _all_blocks(db)
    assert [b["header"]["entry_count"] for b in blocks] == [5, 5, 4]
    sealed = [e["transfer_id"] for b in blocks for e in b["entries"]]
    assert sealed == in_seq_order[:14] and in_seq_order[14] == "pay:job_late"
    await _add_receipt(db, "job_late", 10, 10_000)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    blocks = await _all_blocks(db)
    assert [e["transfer_id"] for b in blocks for e in b["entries"]] == in_seq_order
    report = verify_chain(blocks, PUB, await _live(db), chain_id=CHAIN)
    assert report.ok, [str(f) for f in report.failures]


async def test_payment_without_receipt_is_sealed_late_and_flagged(db: Database) -> None:
    await _mint(db, 0)
    old = now_ms() - RECEIPT_WAIT_MS - 1
    await _job(db, "job_3", 300_000, 10, 10_000, with_receipt=False, settled_at_ms=old)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    report = verify_chain(await _all_blocks(db), PUB, await _live(db))
    assert [(f.height, f.check) for f in report.failures] == [(0, "missing-receipt")]
    # A receipt stored after its payment was sealed is in no block.
    await _add_receipt(db, "job_3", 10, 10_000)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 0
    assert await receipt_block(db, "job_3") is None


async def test_concurrent_sealers_never_seal_a_transfer_twice(chain_db_url: str) -> None:
    first, second = await Database.open(chain_db_url), await Database.open(chain_db_url)
    try:
        stop = asyncio.Event()

        async def sealer(db: Database) -> None:
            while not stop.is_set():
                await seal_pending(db, CHAIN, COORDINATOR)
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(sealer(first)), asyncio.create_task(sealer(second))]
        try:
            for n in range(60):
                await _mint(first if n % 2 else second, n, 10_000)
                if n % 6 == 0:
                    await _job(second, f"job_{n}", 1500, 3, 100)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        await seal_pending(first, CHAIN, COORDINATOR)

        blocks = await _all_blocks(first)
        sealed = [e["transfer_id"] for b in blocks for e in b["entries"]]
        async with first.read() as conn:
            written = (await conn.execute(select(ledger_transfers.c.transfer_id))).all()
            unsealed = (
                await conn.execute(
                    select(ledger_transfers.c.seq).where(ledger_transfers.c.block_height.is_(None))
                )
            ).all()
        assert len(sealed) == len(set(sealed)) == len(written)
        assert unsealed == []
        report = verify_chain(blocks, PUB, await _live(first))
        assert report.ok, [str(f) for f in report.failures]
        assert report.minted_uait == 600_000
    finally:
        await first.close()
        await second.close()


async def test_a_block_drafted_on_a_tip_that_moved_is_refused(db: Database) -> None:
    # Sealing drafts a block outside the write transaction, so another sealer can store
    # that height first; the draft must then be refused, not stored beside it.
    await _mint(db, 0)
    stale = await draft_block(db, CHAIN, COORDINATOR, now_ms())
    assert stale is not None and stale.block["header"]["height"] == 0
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1  # another sealer got there first
    await _mint(db, 1)

    async def store(conn: Any) -> Any:
        return await _store_block(conn, CHAIN, stale)

    with pytest.raises(SealRace, match="sealed by another process"):
        await db.write(store)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    blocks = await _all_blocks(db)
    assert [[e["transfer_id"] for e in b["entries"]] for b in blocks] == [["mint:0"], ["mint:1"]]
    assert verify_chain(blocks, PUB, await _live(db)).ok


async def test_a_chain_is_never_signed_by_two_keys(db: Database) -> None:
    other = generate_private_key()
    await _mint(db, 0)
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    await _mint(db, 1)
    with pytest.raises(ForeignSigner, match=r"coordinator\.key"):
        await seal_pending(db, CHAIN, other)
    # Another process, which has not seen this chain's tip, reads its signer off the block.
    elsewhere = await Database.open(db.url)
    try:
        with pytest.raises(ForeignSigner, match=r"coordinator\.key"):
            await seal_pending(elsewhere, CHAIN, other)
    finally:
        await elsewhere.close()
    assert len(await _all_blocks(db)) == 1  # nothing sealed with the other key
    assert await seal_pending(db, CHAIN, COORDINATOR) == 1
    report = verify_chain(await _all_blocks(db), PUB, await _live(db))
    assert report.ok and report.blocks == 2
    # A chain with no block yet takes whichever key seals its genesis.
    await _mint(db, 2, chain="ait-testnet")
    assert await seal_pending(db, "ait-testnet", other) == 1


async def test_chain_gauges_show_height_and_lag(db: Database, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    async def gauges() -> dict[tuple[str, str], float]:
        return {(g[0], g[3]["chain_id"]): g[4] for g in await chain_gauges(db, settings)}

    await _mint(db, 0)
    await _mint(db, 1)
    before = await gauges()
    assert before[("ait_chain_height", CHAIN)] == -1
    assert before[("ait_chain_unsealed_transfers", CHAIN)] == 2
    assert before[("ait_chain_unsealed_transfers", "ait-testnet")] == 0
    await seal_pending(db, CHAIN, COORDINATOR)
    after = await gauges()
    assert after[("ait_chain_height", CHAIN)] == 0
    assert after[("ait_chain_unsealed_transfers", CHAIN)] == 0


# The seal helper process (coordinator.service.seal_worker) drafts from a SQLite file.


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'chain.db'}")
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def helper(sqlite_db: Database) -> AsyncIterator[SealWorker]:
    worker = await SealWorker.start(sqlite_db.url, COORDINATOR)
    try:
        yield worker
    finally:
        await worker.close()


async def _some_of_everything(db: Database, jobs: int) -> None:
    for n in range(3):
        await _mint(db, n, amount=100_000_000)
    for n in range(jobs):
        await _job(db, f"job_{n}", held=500_000, units=n + 1, price=1_000)


async def test_the_helper_drafts_what_draft_block_drafts(
    sqlite_db: Database, helper: SealWorker
) -> None:
    db = sqlite_db
    await _some_of_everything(db, jobs=300)  # 1,203 transfers: pages of reads, a full block
    now = now_ms()
    here = await draft_block(db, CHAIN, COORDINATOR, now)
    there = await helper.draft(CHAIN, now)
    assert here is not None and there is not None
    assert len(there.seqs) == MAX_ENTRIES_PER_BLOCK
    # Ed25519 signatures are deterministic: the same block, byte for byte.
    assert (there.block, there.row, there.seqs) == (here.block, here.row, here.seqs)

    async def by_helper(db: Database, chain_id: str, key: Any, now: int) -> Any:
        return await helper.draft(chain_id, now)

    assert await seal_pending(db, CHAIN, COORDINATOR, by_helper) == 2
    assert await helper.draft(CHAIN, now_ms()) is None  # nothing left
    await _job(db, "job_late", held=500_000, units=7, price=1_000)
    assert await seal_pending(db, CHAIN, COORDINATOR, by_helper) == 1  # on the new tip
    blocks = await _all_blocks(db)
    assert [len(b["entries"]) for b in blocks] == [1_000, 203, 4]
    report = verify_chain(blocks, PUB, await _live(db), chain_id=CHAIN)
    assert report.ok, [str(f) for f in report.failures]
    assert report.minted_uait == 300_000_000


async def test_the_helper_refuses_a_chain_signed_by_another_key(sqlite_db: Database) -> None:
    await _mint(sqlite_db, 0)
    assert await seal_pending(sqlite_db, CHAIN, generate_private_key()) == 1
    await _mint(sqlite_db, 1)
    worker = await SealWorker.start(sqlite_db.url, COORDINATOR)
    try:
        with pytest.raises(ForeignSigner, match=r"coordinator\.key"):
            await worker.draft(CHAIN, now_ms())
        # The refusal is an answer, not a failure: the same helper drafts the next chain.
        await _mint(sqlite_db, 2, chain="ait-testnet")
        draft = await worker.draft("ait-testnet", now_ms())
        assert draft is not None and draft.block["header"]["height"] == 0
    finally:
        await worker.close()


async def test_a_helper_that_cannot_open_its_database_fails_the_draft(tmp_path: Path) -> None:
    # The helper opens the file on its first read: a directory where the file should be
    # is refused then, and the answer says why.
    worker = await SealWorker.start(f"sqlite+aiosqlite:///{tmp_path}", COORDINATOR)
    try:
        with pytest.raises(SealWorkerFailed, match=r"failed a draft: .*unable to open"):
            await worker.draft(CHAIN, now_ms())
    finally:
        await worker.close()


async def _helper_ready(sealer_: Sealer) -> SealWorker:
    deadline = asyncio.get_running_loop().time() + 60
    while (ready := sealer_.helper) is None:
        assert asyncio.get_running_loop().time() < deadline, "the seal helper never got ready"
        await asyncio.sleep(0.05)
    return ready


async def test_the_sealer_starts_its_helper_for_big_blocks_and_outlives_it(
    sqlite_db: Database,
) -> None:
    db = sqlite_db
    metrics = Metrics()
    sealer_ = Sealer(db, COORDINATOR, metrics, helper_min_entries=5)
    try:
        await _mint(db, 9)
        assert await seal_pending(db, CHAIN, COORDINATOR, sealer_.draft) == 1
        assert sealer_.helper is None  # a block of 1: no helper
        await _some_of_everything(db, jobs=2)  # a block of 11 starts it
        assert await seal_pending(db, CHAIN, COORDINATOR, sealer_.draft) == 1
        assert metrics.blocks_drafted == {"event_loop": 2}
        first = await _helper_ready(sealer_)
        await _job(db, "job_next", held=500_000, units=3, price=1_000)
        assert await seal_pending(db, CHAIN, COORDINATOR, sealer_.draft) == 1
        assert metrics.blocks_drafted == {"event_loop": 2, "helper": 1}
        # Killed, the helper is replaced by drafting on the event loop: no block is lost.
        os.kill(first.pid, signal.SIGKILL)
        await _job(db, "job_after", held=500_000, units=3, price=1_000)
        assert await seal_pending(db, CHAIN, COORDINATOR, sealer_.draft) == 1
        assert metrics.blocks_drafted == {"event_loop": 3, "helper": 1}
        assert sealer_.helper is None
    finally:
        await sealer_.close()
    blocks = await _all_blocks(db)
    assert [len(b["entries"]) for b in blocks] == [1, 11, 4, 4]
    assert verify_chain(blocks, PUB, await _live(db), chain_id=CHAIN).ok


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is left


def test_the_helper_exits_when_its_coordinator_is_killed(tmp_path: Path) -> None:
    """The helper reads requests from its coordinator's pipe: when the coordinator dies
    (SIGKILL: no cleanup runs), the pipe closes and the helper exits by itself."""
    db_path = tmp_path / "chain.db"
    script = (
        "import asyncio, sys\n"
        "from coordinator.db.database import Database\n"
        "from coordinator.service.seal_worker import SealWorker\n"
        "from protocol.keys import generate_private_key\n"
        "async def main():\n"
        f"    db = await Database.open('sqlite+aiosqlite:///{db_path}')\n"
        "    worker = await SealWorker.start(db.url, generate_private_key())\n"
        "    print(worker.pid, flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        helper_pid = int(parent.stdout.readline())
        assert _alive(helper_pid)
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 20
    while _alive(helper_pid):
        assert time.monotonic() < deadline, "the seal helper outlived its coordinator"
        time.sleep(0.05)


async def test_a_helper_that_cannot_start_leaves_the_drafting_to_the_loop(
    sqlite_db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = sqlite_db
    metrics = Metrics()
    sealer_ = Sealer(db, COORDINATOR, metrics, helper_min_entries=1)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))  # an interpreter gone

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "did not start" in r.getMessage()]

    try:
        await _mint(db, 0)
        assert await seal_pending(db, CHAIN, COORDINATOR, sealer_.draft) == 1  # starts it
        deadline = time.monotonic() + 10
        while not failures():
            assert sealer_.helper is None
            assert time.monotonic() < deadline, "the failed start was never reported"
            await asyncio.sleep(0.02)
        for n in (1, 2):  # blocks drafted on the loop, no second start within a minute
            await _mint(db, n)
            assert await seal_pending(db, CHAIN, COORDINATOR, sealer_.draft) == 1
            await asyncio.sleep(0.1)
            assert sealer_.helper is None
    finally:
        await sealer_.close()
    assert metrics.blocks_drafted == {"event_loop": 3}
    assert len(failures()) == 1 and "no-python" in failures()[0]
    assert verify_chain(await _all_blocks(db), PUB, await _live(db), chain_id=CHAIN).ok


async def test_the_helper_yields_the_cpu_to_its_coordinator(helper: SealWorker) -> None:
    """The helper runs niced, so a busy machine runs the coordinator's loop first."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, helper.pid) == min(19, ours + HELPER_NICENESS)
