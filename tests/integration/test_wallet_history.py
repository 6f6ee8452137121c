"""A wallet's history on real databases: the transfers and order it answers, its totals,
and that with a chain given each side reads off its own index in `seq` order (schema
version 4).

With an OR of the debit and credit addresses the database gathered every transfer of the
address and sorted them for each page; on SQLite that ran on the event loop (a client's
first page of 68,000 transfers took 130-155 ms), stalling every request and dispatch."""

from __future__ import annotations

from typing import Any

import pytest
from ait_harness import query_plan
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from chain import store
from coordinator.db.database import Database
from coordinator.db.schema import ledger_transfers

ALICE, BOB, CAROL = ("ait1" + c * 40 for c in "abc")
NOBODY = "ait1" + "f" * 40
ISSUANCE = "ait1" + "0" * 40
DEVNET, TESTNET = "ait-devnet", "ait-testnet"

# (debit, debit kind, credit, credit kind, kind): what a job and a faucet leave behind.
# Holds and refunds move money between one address's own accounts.
PATTERN = (
    (ALICE, "available", ALICE, "escrow", "hold"),
    (ALICE, "escrow", BOB, "available", "pay"),
    (ALICE, "escrow", CAROL, "available", "fee"),
    (ALICE, "escrow", ALICE, "available", "refund"),
    (ISSUANCE, "issuance", ALICE, "available", "mint"),
    (BOB, "available", BOB, "escrow", "hold"),
    (BOB, "escrow", ALICE, "available", "pay"),
)


def _transfer(index: int) -> dict[str, Any]:
    debit, debit_kind, credit, credit_kind, kind = PATTERN[index % len(PATTERN)]
    return {
        "seq": index + 1,
        "transfer_id": f"tr_{index:04d}",
        "chain_id": TESTNET if index % 5 == 4 else DEVNET,
        "debit_address": debit,
        "debit_kind": debit_kind,
        "credit_address": credit,
        "credit_kind": credit_kind,
        "amount_uait": index + 1,
        "kind": kind,
        "job_id": None,
        "hold_id": None,
        "created_at_ms": 1_000 + index // 4,  # four transfers a millisecond
        "block_height": None,
    }


ROWS = [_transfer(i) for i in range(120)]
WINDOW = (1_005, 1_021)  # from (inclusive) and to (exclusive), in ms


def _expected(address: str, chain_id: str | None, window: tuple[int, int] | None) -> list[str]:
    rows = [
        r
        for r in ROWS
        if address in (r["debit_address"], r["credit_address"])
        and (chain_id is None or r["chain_id"] == chain_id)
        and (window is None or window[0] <= r["created_at_ms"] < window[1])
    ]
    return [r["transfer_id"] for r in sorted(rows, key=lambda r: r["seq"], reverse=True)]


CASES = [
    (address, chain_id, window)
    for address in (ALICE, BOB, CAROL, NOBODY)
    for chain_id in (DEVNET, None)
    for window in (None, WINDOW)
]


@pytest.mark.parametrize(("address", "chain_id", "window"), CASES)
async def test_history_pages_are_the_address_transfers_newest_first(
    db: Database, address: str, chain_id: str | None, window: tuple[int, int] | None
) -> None:
    from_ms, to_ms = window or (None, None)

    async def read(conn: AsyncConnection) -> tuple[list[tuple[list[str], int]], Any, Any]:
        await conn.execute(ledger_transfers.insert(), ROWS)
        chains = await store.address_chains(conn, address) if chain_id is None else None
        count = store.history_count(address, chain_id, from_ms, to_ms)
        total, lowest, highest = (await conn.execute(count)).one()
        pages = []
        for offset in range(0, 70, 6):
            for span in (None, (lowest, highest)) if window and total else (None,):
                page = store.history_page(
                    conn.dialect.name, address, chain_id, from_ms, to_ms, 6, offset, chains, span
                )
                found = [store.transfer_from_row(row) for row in await conn.execute(page)]
                pages.append(([t.transfer_id for t in found], total))
        return pages, lowest, highest

    pages, lowest, highest = await db.write(read)
    expected = _expected(address, chain_id, window)
    seqs = [int(t.removeprefix("tr_")) + 1 for t in expected]  # seq = index + 1
    # With a time range the count names its rows' seq span; without one, none.
    assert (lowest, highest) == ((min(seqs), max(seqs)) if window and seqs else (None, None))
    per_offset = 2 if window and expected else 1  # without and with the count's span
    assert [page for page, _ in pages] == [
        expected[i : i + 6] for i in range(0, 70, 6) for _ in range(per_offset)
    ]
    assert {total for _, total in pages} == {len(expected)}
    assert address == NOBODY or expected  # every other case has transfers to page through


async def test_an_address_chains_are_those_of_either_side_of_its_transfers(db: Database) -> None:
    async def chains(conn: AsyncConnection) -> list[list[str]]:
        await conn.execute(ledger_transfers.insert(), ROWS)
        return [await store.address_chains(conn, a) for a in (ALICE, BOB, CAROL, NOBODY)]

    # CAROL is only ever credited (fees), on both chains: the credit side's own scan.
    assert await db.write(chains) == [[DEVNET, TESTNET], [DEVNET, TESTNET], [DEVNET, TESTNET], []]


@pytest.mark.parametrize("chain_id", [DEVNET, None])
@pytest.mark.parametrize("window", [None, WINDOW])
async def test_history_reads_each_side_off_its_index(
    db: Database, window: tuple[int, int] | None, chain_id: str | None
) -> None:
    """With a chain, and without one: on SQLite then chain by chain (`address_chains`),
    on PostgreSQL its own plan of the OR of the sides."""
    from_ms, to_ms = window or (None, None)
    chains = [DEVNET, TESTNET] if chain_id is None else None
    count = store.history_count(ALICE, chain_id, from_ms, to_ms)
    # On SQLite a time range's page is bounded by the span history_count finds.
    span = (3, 110) if window and db.dialect == "sqlite" else None
    page = store.history_page(db.dialect, ALICE, chain_id, from_ms, to_ms, 10, 20, chains, span)

    async def plans(conn: AsyncConnection) -> list[str]:
        await conn.execute(ledger_transfers.insert(), ROWS)
        if chain_id is None:  # each step of the chain scan is a seek on a side's index
            scans = [
                await query_plan(conn, step.params(address=ALICE, after=""))
                for step in store.ADDRESS_CHAIN_STEPS
            ]
            assert "ix_transfers_debit" in scans[0] and "ix_transfers_credit" in scans[1]
            assert not any("TEMP B-TREE" in p or "SCAN" in p for p in scans), scans
        count_plan = await query_plan(conn, count)
        if conn.dialect.name == "postgresql":
            # It plans the OR by its statistics (the pkey backwards for a busy address);
            # with that priced out, both sides must still have an index to read.
            await conn.execute(text("SET LOCAL enable_indexscan = off"))
        return [count_plan, await query_plan(conn, page)]

    count_plan, page_plan = await db.write(plans)
    for plan in (count_plan, page_plan):
        assert "ix_transfers_debit" in plan and "ix_transfers_credit" in plan, plan
        assert [
            s for s in plan.splitlines() if "Seq Scan" in s or s == "SCAN ledger_transfers"
        ] == []
    if db.dialect == "sqlite":
        # No sort, and no gathering of every transfer that an OR of the sides would do.
        bad = ("TEMP B-TREE", "MULTI-INDEX OR")
        assert [s for s in page_plan.splitlines() if any(b in s for b in bad)] == [], page_plan
        if window:  # each side seeks into its span, not walking the newer transfers
            seeks = [s for s in page_plan.splitlines() if "USING INDEX ix_transfers_" in s]
            assert seeks and all("rowid>" in s and "rowid<" in s for s in seeks), page_plan
