"""chain.store applies chain.ledger's rules faithfully: random sequences of operations run
through the database (SQLite and PostgreSQL) and through the pure in-memory ledger give the
same result codes and the same balances. Each example uses its own chain id, and chains
are independent, so examples share one database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain import store
from chain.ledger import Ledger, Result, available, escrow
from coordinator.db.database import Database
from protocol.timefmt import now_ms

ADDRESSES = ["ait1" + f"{i:040x}" for i in range(1, 4)]
JOBS = [f"job_{i}" for i in range(4)]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("mint"), st.sampled_from(ADDRESSES), st.integers(0, 3_000_000)),
        st.tuples(
            st.just("hold"),
            st.sampled_from(JOBS),
            st.sampled_from(ADDRESSES),
            st.integers(0, 2_000_000),
        ),
        st.tuples(
            st.just("post"),
            st.sampled_from(JOBS),
            st.sampled_from(ADDRESSES),
            st.integers(0, 3_000_000),
            st.integers(0, 10_000),
        ),
        st.tuples(st.just("void"), st.sampled_from(JOBS)),
    ),
    max_size=25,
)


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db = await Database.open(db_url)
    yield db
    await db.close()


async def apply(db: Database, ledger: Ledger, chain: str, op: tuple[Any, ...], n: int) -> None:
    kind = op[0]
    now = now_ms()
    if kind == "mint":
        _, address, amount = op
        tid = f"mint:{chain}:{n}"
        expected: Any = ledger.mint(tid, chain, address, amount, now)
        got: Any = await db.write(lambda c: store.mint(c, tid, chain, address, amount, now))
    elif kind == "hold":
        _, job, address, amount = op
        job = f"{chain}-{job}"
        expected = ledger.hold(job, chain, address, amount, now)
        got = await db.write(lambda c: store.hold(c, job, chain, address, amount, now))
    elif kind == "post":
        _, job, miner, cost, fee_bps = op
        job = f"{chain}-{job}"
        expected = ledger.post(job, miner, cost, fee_bps, now).result
        got = (await db.write(lambda c: store.post(c, job, miner, cost, fee_bps, now))).result
    else:
        job = f"{chain}-{op[1]}"
        expected = ledger.void(job, now).result
        got = (await db.write(lambda c: store.void(c, job, now))).result
    assert got == expected, (op, got, expected)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
async def test_store_matches_pure_rules(database: Database, ops: list[tuple[Any, ...]]) -> None:
    chain = f"c-{uuid.uuid4().hex[:12]}"
    ledger = Ledger()
    for n, op in enumerate(ops):
        await apply(database, ledger, chain, op, n)
    assert ledger.check_invariants() == []
    async with database.read() as conn:
        for address in [*ADDRESSES, "ait1" + "0" * 40]:
            bal = await store.balance(conn, chain, address)
            assert bal.available_uait == ledger.balance(available(chain, address))
            assert bal.held_uait == ledger.balance(escrow(chain, address))
        assert await store.minted(conn, chain) == ledger.minted(chain)
    # A replay of the whole sequence through the database changes nothing more.
    if ops and ops[0][0] == "mint":
        _, address, amount = ops[0]
        tid = f"mint:{chain}:0"
        again = await database.write(lambda c: store.mint(c, tid, chain, address, amount, 0))
        assert again == Result.EXISTS
