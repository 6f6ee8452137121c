"""Reads of the block log: pages of blocks, one block, a job's receipt proof, gauges.

The sealer that writes the log is coordinator.service.blocks.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chain.blocks import RECEIPT_TRANSFER_KIND
from chain.merkle import MerkleTree
from coordinator.db.database import Database
from coordinator.db.schema import chain_blocks, ledger_transfers
from coordinator.errors import NotFound
from coordinator.settings import Settings

MAX_BLOCKS_PER_PAGE = 1000
MAX_ENTRIES_PER_PAGE = 10_000  # a page stops early rather than grow without bound
DEFAULT_BLOCKS_PER_PAGE = 100


def _row_to_block(
    row: Any, *, entries_as_stored: bool = False, header: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A block as the API shows it (`header`: its header, when already parsed). With
    `entries_as_stored` its entries stay the JSON text the sealer stored, which orjson
    writes into an answer as it is: a page of 10,000 entries held the event loop ~95 ms
    parsing them and writing them out again."""
    return {
        "header": orjson.loads(row.header) if header is None else header,
        "entries": orjson.Fragment(row.body) if entries_as_stored else orjson.loads(row.body),
        "hash": row.hash,
        "signature": orjson.loads(row.signature),
    }


Source = AsyncConnection | AsyncEngine | Database


@contextlib.asynccontextmanager
async def _connection(
    source: Source,
) -> AsyncIterator[AsyncConnection]:
    if isinstance(source, AsyncConnection):
        yield source
    elif isinstance(source, Database):
        async with source.read() as conn:
            yield conn
    else:
        async with source.connect() as conn:
            yield conn


async def get_blocks(
    source: Source,
    chain_id: str,
    from_height: int = 0,
    limit: int = DEFAULT_BLOCKS_PER_PAGE,
    *,
    entries_as_stored: bool = False,
) -> list[dict[str, Any]]:
    """Blocks of a chain from `from_height` up, in height order: at most `limit`
    (<= MAX_BLOCKS_PER_PAGE), and no more once MAX_ENTRIES_PER_PAGE entries are reached
    (always at least one block when there is one). `entries_as_stored`: each block's
    entries as an `orjson.Fragment` of their stored JSON (for answers), not parsed."""
    limit = max(1, min(limit, MAX_BLOCKS_PER_PAGE))
    from_here = (chain_blocks.c.chain_id == chain_id, chain_blocks.c.height >= from_height)
    async with _connection(source) as conn:
        # Headers first, to see how many blocks fit the page: SQLite reads every row a
        # statement selects (a block's body is ~650 KB at 1,000 entries), and reading a
        # page's 100 blocks to answer 11 of them took ~45 ms, on the event loop.
        headers = await conn.execute(
            select(chain_blocks.c.header)
            .where(*from_here)
            .order_by(chain_blocks.c.height)
            .limit(limit)
        )
        fitting: list[dict[str, Any]] = []
        entries = 0
        for (stored,) in headers:
            header = orjson.loads(stored)
            entries += header["entry_count"]
            if fitting and entries > MAX_ENTRIES_PER_PAGE:
                break
            fitting.append(header)
        if not fitting:
            return []
        c = chain_blocks.c
        rows = await conn.execute(
            select(c.body, c.hash, c.signature)
            .where(*from_here)
            .order_by(c.height)
            .limit(len(fitting))
        )
        # The headers parsed above, not again: sealed blocks never change.
        return [
            _row_to_block(row, entries_as_stored=entries_as_stored, header=header)
            for header, row in zip(fitting, rows, strict=True)
        ]


async def chain_height(source: Source, chain_id: str) -> int | None:
    """The height of the chain's last block; None when it has none."""
    async with _connection(source) as conn:
        value = await conn.scalar(
            select(func.max(chain_blocks.c.height)).where(chain_blocks.c.chain_id == chain_id)
        )
    return None if value is None else int(value)


# Blocks parsed for receipt proofs, by block hash (a sealed block never changes): each
# job's client asks for its receipt soon after its block is sealed, and parsing the block
# and hashing its 1,000 leaves for every one of them took ~6 ms of the event loop a call.
RECENT_PROVEN_BLOCKS = 4


@dataclass(frozen=True)
class _Proven:
    block: dict[str, Any]
    payments: dict[str, int]  # job id -> index of its payment entry
    tree: MerkleTree


_proven: OrderedDict[str, _Proven] = OrderedDict()


def _prove(row: Any) -> _Proven:
    """Parse a sealed block's row for proofs and keep it among the recent ones."""
    block = _row_to_block(row)
    payments: dict[str, int] = {}
    for index, entry in enumerate(block["entries"]):
        if entry.get("kind") == RECEIPT_TRANSFER_KIND and entry.get("job_id"):
            payments.setdefault(entry["job_id"], index)
    proven = _proven[row.hash] = _Proven(block, payments, MerkleTree(block["entries"]))
    if len(_proven) > RECENT_PROVEN_BLOCKS:
        _proven.popitem(last=False)
    return proven


async def receipt_block(source: Source, job_id: str) -> dict[str, Any] | None:
    """Where a job's receipt is sealed, with a Merkle proof of its payment entry.

    {"chain_id", "height", "merkle_proof", "merkle_root", "block_hash", "entry_index",
    "entry"} or None while the receipt is not sealed. `entry` is the Merkle leaf (the
    payment transfer, which holds the receipt): verify_proof(entry, merkle_proof,
    merkle_root), and merkle_root is in the signed header of block `height`.
    """
    async with _connection(source) as conn:
        # The payment carries the receipt, so the receipt's block is the payment's.
        located = (
            await conn.execute(
                select(ledger_transfers.c.chain_id, ledger_transfers.c.block_height).where(
                    ledger_transfers.c.transfer_id == f"{RECEIPT_TRANSFER_KIND}:{job_id}"
                )
            )
        ).first()
        if located is None or located.block_height is None:
            return None
        at = (
            chain_blocks.c.chain_id == located.chain_id,
            chain_blocks.c.height == located.block_height,
        )
        block_hash = await conn.scalar(select(chain_blocks.c.hash).where(*at))
        if block_hash is None:
            return None
        proven = _proven.get(block_hash)
        if proven is not None:
            _proven.move_to_end(block_hash)
        else:
            row = (await conn.execute(select(chain_blocks).where(*at))).first()
            if row is None:
                return None
            proven = _prove(row)
    index = proven.payments.get(job_id)
    if index is None:
        return None
    entry = proven.block["entries"][index]
    if entry.get("receipt") is None:
        return None  # paid without its receipt (verification flags that): not sealed
    return {
        "chain_id": located.chain_id,
        "height": int(located.block_height),
        "merkle_proof": proven.tree.proof(index),
        "merkle_root": proven.block["header"]["merkle_root"],
        "block_hash": proven.block["hash"],
        "entry_index": index,
        "entry": entry,
    }


# --- use cases for coordinator.api.chain -------------------------------------------------


def _known_chain(settings: Settings, chain_id: str) -> None:
    if settings.chain(chain_id) is None:
        raise NotFound(f"unknown chain {chain_id!r}")


async def blocks_page(
    db: Database, settings: Settings, chain_id: str, from_height: int, limit: int
) -> dict[str, Any]:
    """`GET /v1/chain/{chain_id}/blocks`: a page of blocks and where the next one starts."""
    _known_chain(settings, chain_id)
    async with db.read() as conn:
        blocks = await get_blocks(conn, chain_id, from_height, limit, entries_as_stored=True)
        height = await chain_height(conn, chain_id)
    next_height = blocks[-1]["header"]["height"] + 1 if blocks else from_height
    has_more = height is not None and next_height <= height
    return {
        "chain_id": chain_id,
        "height": height,  # the last block's height; null while the chain has none
        "blocks": blocks,
        "has_more": has_more,
        "next_from_height": next_height if has_more else None,
    }


async def one_block(db: Database, settings: Settings, chain_id: str, height: int) -> dict[str, Any]:
    """`GET /v1/chain/{chain_id}/blocks/{height}`."""
    _known_chain(settings, chain_id)
    blocks = await get_blocks(db, chain_id, height, 1, entries_as_stored=True)
    if not blocks or blocks[0]["header"]["height"] != height:
        raise NotFound(f"chain {chain_id!r} has no block at height {height}")
    return blocks[0]


async def chain_gauges(
    db: Database, settings: Settings
) -> list[tuple[str, str, str, dict[str, str], float]]:
    """/metrics gauges per chain (Metrics.render's format): the last block's height and
    how many settled transfers wait for a block (the sealer's lag)."""
    gauges: list[tuple[str, str, str, dict[str, str], float]] = []
    async with db.read() as conn:
        for chain in settings.chains:
            height = await chain_height(conn, chain.id)
            pending = await conn.scalar(
                select(func.count())
                .select_from(ledger_transfers)
                .where(ledger_transfers.c.chain_id == chain.id)
                .where(ledger_transfers.c.block_height.is_(None))
            )
            labels = {"chain_id": chain.id}
            gauges.append(
                (
                    "ait_chain_height",
                    "gauge",
                    "Height of the chain's last block (-1: none).",
                    labels,
                    float(-1 if height is None else height),
                )
            )
            gauges.append(
                (
                    "ait_chain_unsealed_transfers",
                    "gauge",
                    "Settled transfers not yet in a block.",
                    labels,
                    float(pending or 0),
                )
            )
    return gauges
