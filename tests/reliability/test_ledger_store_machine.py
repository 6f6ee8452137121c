"""Hypothesis state machine: the persisted ledger (chain.store through the coordinator's
group-commit writer, on a real SQLite file and a real PostgreSQL database) against the
pure model (chain.ledger.Ledger), step by step, over several chain ids.

tests/property/test_ledger_state.py checks the pure rules alone; this machine checks that
the store applies exactly those rules: every operation answers what the model answers,
and after every step the database's balances, holds and transfers equal the model's, each
chain sums to zero, no balance is negative and every escrow equals its pending holds.
Operations also run as concurrent batches (one group commit; each in its own savepoint)
and some fail on purpose mid-transaction, which must roll back only themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from reliability_cluster import record, soak
from sqlalchemy import func, select

from chain import store
from chain.ledger import TREASURY_ADDRESS, AccountId, AccountKind, HoldStatus, Ledger, Result
from coordinator.db.database import Database
from protocol.money import MAX_AMOUNT_UAIT

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

T = TypeVar("T")
ADDRESSES = (*("ait1" + f"{i:040x}" for i in range(0x10, 0x14)), TREASURY_ADDRESS)
amounts = st.one_of(
    st.integers(0, 3_000_000),
    st.sampled_from([-1, MAX_AMOUNT_UAIT, MAX_AMOUNT_UAIT + 1]),  # edges and bad requests
)


class Loop:
    """An event loop on its own thread, so the synchronous machine can await the store."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Boom(Exception):
    """Raised on purpose inside a write, after the ledger rows were written."""


def machine_for(loop: Loop, db: Database, counters: dict[str, int]) -> type[RuleBasedStateMachine]:
    examples = itertools.count()

    class StoreMachine(RuleBasedStateMachine):
        jobs = Bundle("jobs")

        def __init__(self) -> None:
            super().__init__()
            n = next(examples)
            # Fresh chain ids per example: the database is shared, the model starts empty.
            self.chains = tuple(f"m{n}-c{i}" for i in range(3))
            self.model = Ledger()
            self.ids = itertools.count()
            self.mints: list[tuple[str, str, str, int]] = []
            counters["examples"] += 1

        # -- helpers ------------------------------------------------------------------
        def write(self, op: Callable[[Any], Awaitable[T]]) -> T:
            return loop.run(db.write(op))

        def step(self) -> None:
            counters["steps"] += 1

        # -- rules ----------------------------------------------------------------------
        @rule(chain=st.integers(0, 2), address=st.sampled_from(ADDRESSES), amount=amounts)
        def mint(self, chain: int, address: str, amount: int) -> None:
            self.step()
            # transfer ids are unique in the whole database: namespaced per example
            chain_id, tid = self.chains[chain], f"mint:{self.chains[0]}:{next(self.ids)}"
            expected = self.model.mint(tid, chain_id, address, amount, 1)
            got = self.write(lambda c: store.mint(c, tid, chain_id, address, amount, 1))
            assert got == expected, (got, expected)
            if got == Result.CREATED:
                self.mints.append((tid, chain_id, address, amount))

        @rule(data=st.data(), change=st.booleans())
        def replay_mint(self, data: st.DataObject, change: bool) -> None:
            self.step()
            if not self.mints:
                return
            tid, chain_id, address, amount = data.draw(st.sampled_from(self.mints))
            amount += int(change)
            expected = self.model.mint(tid, chain_id, address, amount, 2)
            got = self.write(lambda c: store.mint(c, tid, chain_id, address, amount, 2))
            assert got == expected, (got, expected)
            if amount <= MAX_AMOUNT_UAIT:  # else amount_too_large comes first
                assert got == (Result.EXISTS_WITH_DIFFERENT_FIELDS if change else Result.EXISTS)

        @rule(
            target=jobs,
            chain=st.integers(0, 2),
            address=st.sampled_from(ADDRESSES[:4]),
            amount=amounts,
        )
        def hold(self, chain: int, address: str, amount: int) -> str:
            self.step()
            chain_id, job = self.chains[chain], f"job_{self.chains[chain]}_{next(self.ids)}"
            expected = self.model.hold(job, chain_id, address, amount, 3)
            got = self.write(lambda c: store.hold(c, job, chain_id, address, amount, 3))
            assert got == expected, (got, expected)
            return job

        @rule(
            job=jobs,
            miner=st.sampled_from(ADDRESSES),
            cost=st.integers(0, 4_000_000),
            fee_bps=st.sampled_from([0, 250, 10_000]),
        )
        def post(self, job: str, miner: str, cost: int, fee_bps: int) -> None:
            self.step()
            expected = self.model.post(job, miner, cost, fee_bps, 4)
            got = self.write(lambda c: store.post(c, job, miner, cost, fee_bps, 4))
            _same_settlement(got, expected)

        @rule(
            posts=st.lists(
                st.tuples(
                    st.one_of(jobs, st.just("job_never_held")),
                    st.sampled_from(ADDRESSES),
                    st.integers(0, 4_000_000),
                    st.sampled_from([0, 250, 10_000]),
                ),
                min_size=1,
                max_size=6,
            )
        )
        def post_many(self, posts: list[tuple[str, str, int, int]]) -> None:
            """One statement per table for several posts (a job may repeat, with the same
            or other fields): each answers what posting them one by one would."""
            self.step()
            expected = [self.model.post(job, m, cost, fee, 4) for job, m, cost, fee in posts]
            requests = [store.PostRequest(*post) for post in posts]
            got = self.write(lambda c: store.post_many(c, requests, 4))
            for one, model in zip(got, expected, strict=True):
                _same_settlement(one, model)

        @rule(job=jobs)
        def void(self, job: str) -> None:
            self.step()
            expected = self.model.void(job, 5)
            got = self.write(lambda c: store.void(c, job, 5))
            _same_settlement(got, expected)

        @rule(job=st.sampled_from(["job_none", "job_never_held"]))
        def resolve_unknown(self, job: str) -> None:
            self.step()
            got = self.write(lambda c: store.void(c, job, 6))
            assert got.result == Result.HOLD_NOT_FOUND

        @rule(data=st.data(), size=st.integers(2, 6))
        def concurrent_batch(self, data: st.DataObject, size: int) -> None:
            """Several settlements and holds submitted at once share one group commit; they
            apply in submission order, exactly as the model applies them one by one."""
            self.step()
            ops: list[tuple[str, Any]] = []
            for _ in range(size):
                kind = data.draw(st.sampled_from(["post", "void", "hold", "mint"]))
                chain_id = self.chains[data.draw(st.integers(0, 2))]
                address = data.draw(st.sampled_from(ADDRESSES[:4]))
                held = [h.job_id for h in self.model.holds.values() if h.job_id]
                if kind in ("post", "void") and held:
                    job = data.draw(st.sampled_from(sorted(held)))
                else:
                    kind, job = "hold", f"job_{chain_id}_{next(self.ids)}"
                amount = data.draw(st.integers(0, 2_000_000))
                ops.append((kind, (job, chain_id, address, amount)))

            def store_op(kind: str, args: tuple[str, str, str, int]) -> Any:
                job, chain_id, address, amount = args
                if kind == "post":
                    return lambda c: store.post(c, job, address, amount, 100, 7)
                if kind == "void":
                    return lambda c: store.void(c, job, 7)
                if kind == "mint":
                    return lambda c: store.mint(c, f"mint:{job}", chain_id, address, amount, 7)
                return lambda c: store.hold(c, job, chain_id, address, amount, 7)

            async def submit_all() -> list[Any]:
                futures = [asyncio.ensure_future(db.write(store_op(k, a))) for k, a in ops]
                return list(await asyncio.gather(*futures))

            got = loop.run(submit_all())
            for (kind, (job, chain_id, address, amount)), answer in zip(ops, got, strict=True):
                if kind == "post":
                    _same_settlement(answer, self.model.post(job, address, amount, 100, 7))
                elif kind == "void":
                    _same_settlement(answer, self.model.void(job, 7))
                elif kind == "mint":
                    expected = self.model.mint(f"mint:{job}", chain_id, address, amount, 7)
                    assert answer == expected
                else:
                    assert answer == self.model.hold(job, chain_id, address, amount, 7)
            counters["batched_ops"] += len(ops)

        @rule(chain=st.integers(0, 2), address=st.sampled_from(ADDRESSES[:4]))
        def failing_write_rolls_back(self, chain: int, address: str) -> None:
            """A write that mints and holds, then fails: nothing of it may remain."""
            self.step()
            chain_id, job = self.chains[chain], f"job_{self.chains[chain]}_{next(self.ids)}"

            async def op(c: Any) -> None:
                await store.mint(c, f"mint:{job}", chain_id, address, 1000, 8)
                await store.hold(c, job, chain_id, address, 1000, 8)
                raise Boom

            with pytest.raises(Boom):
                self.write(op)
            counters["rolled_back"] += 1

        # -- invariants ---------------------------------------------------------------
        @invariant()
        def database_equals_model(self) -> None:
            counters["invariant_checks"] += 1
            balances, holds, transfers, minted = loop.run(_snapshot(db, self.chains))
            want = {a: v for a, v in self.model.balances.items() if v != 0}
            assert {a: v for a, v in balances.items() if v != 0} == want
            assert holds == {h.hold_id: h.status for h in self.model.holds.values()}
            assert transfers == len(self.model.transfers)
            for chain_id in self.chains:
                assert sum(v for a, v in balances.items() if a.chain_id == chain_id) == 0
                assert minted[chain_id] == self.model.minted(chain_id)
            assert self.model.check_invariants() == []
            for account, value in balances.items():
                assert account.kind == AccountKind.ISSUANCE or value >= 0, (account, value)
            pending: dict[AccountId, int] = {}
            for h in self.model.holds.values():
                if h.status == HoldStatus.PENDING:
                    key = AccountId(h.chain_id, h.address, AccountKind.ESCROW)
                    pending[key] = pending.get(key, 0) + h.amount_uait
            for account, value in balances.items():
                if account.kind == AccountKind.ESCROW:
                    assert value == pending.get(account, 0), (account, value)

    return StoreMachine


def _same_settlement(got: Any, expected: Any) -> None:
    fields = ("result", "charged_uait", "fee_uait", "paid_uait", "returned_uait")
    assert [getattr(got, f) for f in fields] == [getattr(expected, f) for f in fields], (
        got,
        expected,
    )


async def _snapshot(
    db: Database, chains: tuple[str, ...]
) -> tuple[dict[AccountId, int], dict[str, HoldStatus], int, dict[str, int]]:
    a, h, t = store.ledger_accounts, store.ledger_holds, store.ledger_transfers
    async with db.read() as conn:
        balances = {
            AccountId(r.chain_id, r.address, AccountKind(r.kind)): r.balance_uait
            for r in await conn.execute(select(a).where(a.c.chain_id.in_(chains)))
        }
        holds = {
            r.hold_id: HoldStatus(r.status)
            for r in await conn.execute(select(h).where(h.c.chain_id.in_(chains)))
        }
        count = (
            await conn.execute(select(func.count()).select_from(t).where(t.c.chain_id.in_(chains)))
        ).scalar_one()
        minted = {c: await store.minted(conn, c) for c in chains}
    return balances, holds, int(count), minted


def test_ledger_store_matches_the_model(db_url: str) -> None:
    # 5,000 steps on each backend: 10,000 in all within the CI budget (AIT_SOAK=1: 50,000 each)
    target = 50_000 if soak() else 5_000
    counters = dict.fromkeys(
        ("examples", "steps", "invariant_checks", "batched_ops", "rolled_back"), 0
    )
    loop = Loop()
    db = loop.run(Database.open(db_url))
    try:
        machine = machine_for(loop, db, counters)
        config = settings(
            max_examples=60,
            stateful_step_count=60,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        runs = 0
        while counters["steps"] < target and runs < 20:
            run_state_machine_as_test(machine, settings=config)
            runs += 1
        assert counters["steps"] >= target, counters
    finally:
        loop.run(db.close())
        loop.close()
    record(f"ledger_store_machine[{db_url.split('+')[0]}]", counters)
