"""Sealing: settled transfers -> signed blocks in chain_blocks.

Every `block_interval_seconds` the sealer (its loop: coordinator.service.sealer) takes,
per configured chain, the transfers not yet in a block (`ledger_transfers.block_height IS
NULL`, in `seq` order), attaches the signed receipt each payment settles and seals them
into the next block with the coordinator key (each entry's canonical bytes hashed for its
leaf and joined for the body; the header by chain.blocks.seal_header). That part reads
committed rows a page at a time and runs outside any write transaction, handing the event
loop back between pages and slices of entries, so neither the group-commit writer nor
request handling waits for it (on a busy SQLite file it runs in the seal helper process
instead). Then one short transaction inserts the block and stamps `block_height` on its
transfers (a receipt's block is its payment's, so receipts are not stamped); the guards
below refuse a draft whose height or transfers another sealer took meanwhile. Blocks are
never rewritten.

Several coordinator processes on one PostgreSQL: a transaction-scoped advisory lock per
chain lets one of them seal at a time (the others skip the round), and two guards back it
up: the (chain_id, height) primary key refuses a second block at a height, and the
transfers are stamped `WHERE block_height IS NULL` with the row count checked, so a
transfer can never land in two blocks. A refused round rolls back and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from chain.blocks import (
    GENESIS_PREV_HASH,
    MAX_ENTRIES_PER_BLOCK,
    RECEIPT_TRANSFER_KIND,
    seal_header,
    transfer_entry,
)
from chain.merkle import leaf_hash_of_bytes, root_of_leaf_hashes
from chain.store import padded
from coordinator.db.database import Database
from coordinator.db.schema import chain_blocks, ledger_transfers, receipts

# GET /v1/jobs/{job_id}/receipt calls blocks.receipt_block; it lives with the reads.
from coordinator.service.block_reads import receipt_block as receipt_block
from protocol.canonical import canonical_bytes
from protocol.keys import PrivateKey, public_key_hex
from protocol.timefmt import now_ms

log = logging.getLogger(__name__)

MAX_BLOCKS_PER_ROUND = 20  # a backlog is worked off over rounds, never in one long stall
# Entries are built and hashed this many at a time, the event loop served in between
# (~1.5 ms a slice when this was set, ~0.1 ms by round 23, entries having got cheaper):
# sealing a second of settlements in one go stalled every request and dispatch for ~40 ms
# at 100 jobs/s, and the jobs caught in it made the p99 (docs/benchmarks.md, round 4).
ENTRIES_PER_SLICE = 8
# Pending transfers (and their payments' receipts) are read this many at a time, the event
# loop served between pages: read in one go, a block's 1,000 held the loop for ~7 ms, the
# sealer's longest stall (docs/benchmarks.md, round 21).
PENDING_PAGE = 125
# A payment whose receipt row is missing waits this long for it. Settlement writes both in
# one transaction, so a wait means a bug elsewhere; it is kept short because the block (and
# every transfer after the payment) waits too. After it the payment is sealed without a
# receipt, which verification flags as missing-receipt.
RECEIPT_WAIT_MS = 5_000


class SealRace(Exception):
    """Another sealer took these transfers or this height first; retry next round."""


class ForeignSigner(Exception):
    """The chain's blocks are signed by another coordinator key than this process's.

    A chain signed by two keys could not be verified against the one key /v1/chains
    publishes, so this process leaves sealing to the coordinator that holds the chain's
    key (every process on one database must use the same coordinator.key)."""


def _lock_key(chain_id: str) -> int:
    # A stable signed 64-bit key for pg_try_advisory_xact_lock.
    digest = hashlib.sha256(b"ait-seal:" + chain_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_TIP = (
    select(chain_blocks.c.height, chain_blocks.c.hash)
    .where(chain_blocks.c.chain_id == bindparam("t_chain"))
    .order_by(chain_blocks.c.height.desc())
    .limit(1)
)
# A block's signature is stored after its body: on SQLite reading it walks the body's
# overflow pages (~0.6 MB for 1,000 entries; 0.22 ms against 0.015 ms without it, the
# reader's cache emptied by a commit as in the coordinator; docs/benchmarks.md, round 24).
# So the tip's signer is read once per tip this process did not seal itself.
_SIGNATURE = select(chain_blocks.c.signature).where(
    chain_blocks.c.chain_id == bindparam("s_chain"), chain_blocks.c.height == bindparam("s_height")
)
# Per database and chain: (hash, signer's public key) of the last tip seen or sealed here.
_TIP_SIGNERS: weakref.WeakKeyDictionary[Database, dict[str, tuple[str, str | None]]] = (
    weakref.WeakKeyDictionary()
)


def note_signer(db: Database, chain_id: str, block_hash: str, signer: str | None) -> None:
    """Remember who signed the block `block_hash` of a chain, so a draft on that tip need
    not read its signature back (used only while that block is the tip)."""
    _TIP_SIGNERS.setdefault(db, {})[chain_id] = (block_hash, signer)


async def _tip(conn: AsyncConnection, db: Database, chain_id: str) -> tuple[int, str, str | None]:
    """(next height, prev_hash, public key that signed the last block) of a chain."""
    row = (await conn.execute(_TIP, {"t_chain": chain_id})).first()
    if row is None:
        return 0, GENESIS_PREV_HASH, None
    height, block_hash = int(row[0]), str(row[1])
    known = _TIP_SIGNERS.get(db, {}).get(chain_id)
    if known is not None and known[0] == block_hash:
        return height + 1, block_hash, known[1]
    stored = (
        await conn.execute(_SIGNATURE, {"s_chain": chain_id, "s_height": height})
    ).scalar_one()
    signer: str | None = json.loads(stored).get("public_key")
    note_signer(db, chain_id, block_hash, signer)
    return height + 1, block_hash, signer


# Rows are unpacked by position (Row attribute access costs ~1 us a name; round 8).
_PENDING_NAMES = (
    "seq", "transfer_id", "kind", "chain_id", "debit_address", "debit_kind",
    "credit_address", "credit_kind", "amount_uait", "created_at_ms", "job_id",
)  # fmt: skip
_PENDING_COLUMNS = tuple(ledger_transfers.c[name] for name in _PENDING_NAMES)
_KIND, _JOB = _PENDING_NAMES.index("kind"), _PENDING_NAMES.index("job_id")


# The sealer's statements are built once, with bind parameters (per number of ids, `padded`,
# where they take a list): built per block they went through SQLAlchemy's compiler and
# its expanding IN lists every time, ~3% of the coordinator under load (round 9).
_PENDING = (
    select(*_PENDING_COLUMNS)
    .where(ledger_transfers.c.chain_id == bindparam("p_chain"))
    .where(ledger_transfers.c.block_height.is_(None))
    .where(ledger_transfers.c.seq > bindparam("p_after"))
    .order_by(ledger_transfers.c.seq)
    .limit(PENDING_PAGE)
)


_INSERT_BLOCK = chain_blocks.insert()


@functools.cache
def _signed_receipts(count: int) -> Any:
    return select(receipts.c.job_id, receipts.c.receipt, receipts.c.signature).where(
        receipts.c.job_id.in_([bindparam(f"r{i}") for i in range(count)])
    )


@functools.cache
def _stamp_transfers(count: int) -> Any:
    return (
        update(ledger_transfers)
        .where(ledger_transfers.c.seq.in_([bindparam(f"s{i}") for i in range(count)]))
        .where(ledger_transfers.c.block_height.is_(None))
        .values(block_height=bindparam("s_height"))
    )


@functools.cache
def _names(prefix: str, count: int) -> tuple[str, ...]:
    # Formatting a block's 1,024 names cost ~0.7 ms inside its write transaction.
    return tuple(f"{prefix}{i}" for i in range(count))


def _numbered(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    """`values` padded, as the parameters `prefix`0, `prefix`1, ... of a statement above."""
    full = padded(values)
    return dict(zip(_names(prefix, len(full)), full, strict=True))


async def _pending_rows(
    conn: AsyncConnection, chain_id: str, after: int
) -> tuple[Sequence[Any], dict[str, tuple[str, str]]]:
    """The chain's next unsealed transfers after seq `after`, in seq order (a page of
    PENDING_PAGE at most), as rows of `_PENDING_COLUMNS`, and the stored (receipt,
    signature) JSON of the payments among them, by job id."""
    rows = (await conn.execute(_PENDING, {"p_chain": chain_id, "p_after": after})).all()
    paid_jobs = [r[_JOB] for r in rows if r[_KIND] == RECEIPT_TRANSFER_KIND and r[_JOB]]
    signed: dict[str, tuple[str, str]] = {}
    if paid_jobs:
        params = _numbered("r", paid_jobs)
        for job_id, receipt, signature in await conn.execute(_signed_receipts(len(params)), params):
            signed[job_id] = (receipt, signature)
    return rows, signed


@dataclass(frozen=True)
class Draft:
    """A sealed block not yet stored: its header, hash and signature (`block`, no entries),
    its chain_blocks row, and the transfer rows storing it must stamp. The row's JSON is
    serialised here, outside the write transaction (~1 ms for a block of 1,000 entries
    that every other write would wait on)."""

    block: dict[str, Any]
    row: dict[str, Any]
    seqs: list[int]


async def _pending_entries(
    db: Database, chain_id: str, rows: Sequence[Any], signed: dict[str, tuple[str, str]]
) -> AsyncGenerator[tuple[Any, tuple[str, str] | None], None]:
    """The pending transfers from the first page (`rows`, `signed`) on, each with its
    stored receipt when it is a payment, a page read at a time; the event loop is served
    between slices of entries and between pages. The caller stops when its block is full."""
    index = 0
    while rows:
        for row in rows:
            index += 1
            if index % ENTRIES_PER_SLICE == 0:
                await asyncio.sleep(0)  # let requests and dispatch run between slices
            kind, job_id = row[_KIND], row[_JOB]
            yield row, signed.get(job_id) if kind == RECEIPT_TRANSFER_KIND else None
        if len(rows) < PENDING_PAGE:
            return
        await asyncio.sleep(0)
        async with db.read() as conn:
            rows, signed = await _pending_rows(conn, chain_id, int(rows[-1][0]))


async def draft_block(db: Database, chain_id: str, key: PrivateKey, now: int) -> Draft | None:
    """Seal the chain's pending transfers into its next block, outside any write
    transaction (None when nothing is pending). What it read may be stale by the time
    _store_block runs; the height's primary key and the stamp count catch that."""
    async with db.read() as conn:
        rows, signed = await _pending_rows(conn, chain_id, -1)
        if not rows:
            return None
        height, prev_hash, signer = await _tip(conn, db, chain_id)
    if signer is not None and signer != public_key_hex(key):
        raise ForeignSigner(
            f"chain {chain_id} is signed by coordinator key {signer[:16]}..., this process "
            f"holds {public_key_hex(key)[:16]}...; copy the chain's coordinator.key here"
        )
    seqs: list[int] = []
    entries: list[bytes] = []  # canonical: each hashed for its leaf, all joined for the body
    leaves: list[bytes] = []
    pending = contextlib.aclosing(_pending_entries(db, chain_id, rows, signed))
    async with pending as transfers:
        async for row, stored in transfers:
            (seq, transfer_id, kind, row_chain, debit_address, debit_kind, credit_address,
             credit_kind, amount_uait, created_at_ms, job_id) = row  # fmt: skip
            if kind == RECEIPT_TRANSFER_KIND and stored is None:
                if now - created_at_ms < RECEIPT_WAIT_MS:
                    break  # keep seq order: this block ends before the payment
                log.error("sealing a payment without its receipt", extra={"job_id": job_id})
            entry = transfer_entry(
                transfer_id=transfer_id,
                kind=kind,
                chain_id=row_chain,
                debit_address=debit_address,
                debit_kind=debit_kind,
                credit_address=credit_address,
                credit_kind=credit_kind,
                amount_uait=int(amount_uait),
                created_at_ms=int(created_at_ms),
                job_id=job_id,
                receipt=None if stored is None else orjson.loads(stored[0]),
                receipt_signature=None if stored is None else orjson.loads(stored[1]),
            )
            data = canonical_bytes(entry)
            seqs.append(int(seq))
            entries.append(data)
            leaves.append(leaf_hash_of_bytes(data))
            if len(entries) == MAX_ENTRIES_PER_BLOCK:
                break
    if not entries:
        return None
    block = seal_header(
        chain_id=chain_id,
        height=height,
        prev_hash=prev_hash,
        merkle_root=root_of_leaf_hashes(leaves),
        entry_count=len(entries),
        created_at_ms=now,
        private_key=key,
    )
    header = block["header"]
    row = {
        "chain_id": chain_id,
        "height": height,
        "hash": block["hash"],
        "prev_hash": header["prev_hash"],
        "merkle_root": header["merkle_root"],
        "created_at_ms": now,
        "header": canonical_bytes(header).decode(),
        # The entries as a JSON array of their canonical forms: the bytes just hashed, not
        # a second encoding of every entry (docs/benchmarks.md, round 23).
        "body": (b"[" + b",".join(entries) + b"]").decode(),
        "signature": orjson.dumps(block["signature"]).decode(),
    }
    return Draft(block, row, seqs)


async def _store_block(conn: AsyncConnection, chain_id: str, draft: Draft) -> dict[str, Any] | None:
    """Insert a drafted block and stamp its transfers, inside the caller's
    transaction; None when another process is sealing this chain now (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        locked = await conn.scalar(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _lock_key(chain_id)}
        )
        if not locked:
            return None
    height = draft.row["height"]
    try:
        await conn.execute(_INSERT_BLOCK, draft.row)
    except IntegrityError as exc:
        raise SealRace(f"block {chain_id}/{height} was sealed by another process") from exc
    seqs = _numbered("s", draft.seqs)  # padding repeats a seq: the count stays distinct rows
    stamped = await conn.execute(_stamp_transfers(len(seqs)), {**seqs, "s_height": height})
    if stamped.rowcount != len(draft.seqs):
        raise SealRace(f"transfers of {chain_id} were sealed by another process")
    return draft.block


_ANY_PENDING = (
    select(ledger_transfers.c.seq)
    .where(ledger_transfers.c.chain_id == bindparam("a_chain"))
    .where(ledger_transfers.c.block_height.is_(None))
    .limit(1)
)


async def _has_pending(db: Database, chain_id: str) -> bool:
    async with db.read() as conn:
        row = (await conn.execute(_ANY_PENDING, {"a_chain": chain_id})).first()
    return row is not None


# What drafts a chain's next block: draft_block itself, or the same run in the seal helper
# process (coordinator.service.sealer picks; coordinator.service.seal_worker runs it).
Drafter = Callable[[Database, str, PrivateKey, int], Awaitable["Draft | None"]]


async def seal_pending(
    db: Database, chain_id: str, key: PrivateKey, drafter: Drafter | None = None
) -> int:
    """Seal every pending transfer of a chain (bounded rounds); the number of blocks made.
    Each block is drafted by `drafter` (default draft_block) and stored here."""
    made = 0
    if not await _has_pending(db, chain_id):
        return made  # the common idle case costs a read, not a write transaction
    draft_next = draft_block if drafter is None else drafter
    for _ in range(MAX_BLOCKS_PER_ROUND):
        draft = await draft_next(db, chain_id, key, now_ms())
        if draft is None:
            return made

        async def op(conn: AsyncConnection, draft: Draft = draft) -> dict[str, Any] | None:
            return await _store_block(conn, chain_id, draft)

        try:
            block = await db.write(op)
        except SealRace as exc:
            log.info("seal round lost: %s", exc)
            return made
        if block is None:
            return made
        # Committed: the chain's tip is this block, signed here.
        note_signer(db, chain_id, block["hash"], block["signature"]["public_key"])
        made += 1
        log.debug(
            "sealed block",
            extra={"chain_id": chain_id, "height": block["header"]["height"]},
        )
        if block["header"]["entry_count"] < MAX_ENTRIES_PER_BLOCK:
            return made
    return made
