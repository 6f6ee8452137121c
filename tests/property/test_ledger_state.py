"""Hypothesis state machine over chain.ledger's rules.

After every step, on every chain: all accounts sum to zero (so the non-issuance accounts
sum to what was minted), no available or escrow balance is negative, each escrow equals its
pending holds (top-ups included); a hold resolves at most once, releasing its whole amount;
a replayed transfer answers `exists` (or `exists_with_different_fields`) and changes
nothing.
"""

from __future__ import annotations

import copy

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from chain.ledger import (
    TREASURY_ADDRESS,
    HoldStatus,
    Ledger,
    Result,
    available,
    hold_id_for,
)

CHAINS = ("ait-devnet", "ait-testnet")
ADDRESSES = tuple("ait1" + f"{i:040x}" for i in range(2, 6))
amounts = st.integers(min_value=0, max_value=5_000_000)


def snapshot(ledger: Ledger) -> tuple[object, object, object]:
    return (dict(ledger.balances), dict(ledger.transfers), dict(ledger.holds))


class LedgerMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")
    resolved = Bundle("resolved")

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.minted = dict.fromkeys(CHAINS, 0)
        self.mint_ids: list[tuple[str, str, str, int]] = []
        self.counter = 0
        self.resolutions: dict[str, HoldStatus] = {}

    @rule(chain=st.sampled_from(CHAINS), address=st.sampled_from(ADDRESSES), amount=amounts)
    def mint(self, chain: str, address: str, amount: int) -> None:
        self.counter += 1
        transfer_id = f"mint:{self.counter}"
        assert self.ledger.mint(transfer_id, chain, address, amount) == Result.CREATED
        self.minted[chain] += amount
        self.mint_ids.append((transfer_id, chain, address, amount))

    @precondition(lambda self: self.mint_ids)
    @rule(data=st.data(), change_amount=st.booleans())
    def replay_mint(self, data: st.DataObject, change_amount: bool) -> None:
        transfer_id, chain, address, amount = data.draw(st.sampled_from(self.mint_ids))
        before = snapshot(self.ledger)
        result = self.ledger.mint(transfer_id, chain, address, amount + int(change_amount))
        expected = Result.EXISTS_WITH_DIFFERENT_FIELDS if change_amount else Result.EXISTS
        assert result == expected
        assert snapshot(self.ledger) == before

    @rule(
        target=jobs,
        chain=st.sampled_from(CHAINS),
        address=st.sampled_from(ADDRESSES),
        amount=amounts,
    )
    def hold(self, chain: str, address: str, amount: int) -> str:
        self.counter += 1
        job_id = f"job_{self.counter}"
        before = snapshot(self.ledger)
        free = self.ledger.balance(available(chain, address))
        result = self.ledger.hold(job_id, chain, address, amount)
        if amount > free:
            assert result == Result.EXCEEDS_AVAILABLE
            assert snapshot(self.ledger) == before
            return job_id  # a job without a hold: resolving it answers hold_not_found
        assert result == Result.CREATED
        again = self.ledger.hold(job_id, chain, address, amount)
        assert again == Result.EXISTS
        return job_id

    @rule(job_id=st.one_of(jobs, resolved), amount=amounts)
    def top_up(self, job_id: str, amount: int) -> None:
        """A claim by a dearer miner grows a pending hold; nothing else moves money."""
        hold = self.ledger.holds.get(hold_id_for(job_id))
        before = snapshot(self.ledger)
        free = None if hold is None else self.ledger.balance(available(hold.chain_id, hold.address))
        self.counter += 1
        attempt = self.counter
        result = self.ledger.top_up(job_id, attempt, amount)
        if hold is None or hold.status != HoldStatus.PENDING:
            expected = Result.HOLD_NOT_FOUND if hold is None else Result.HOLD_ALREADY_RESOLVED
            assert result == expected
            assert snapshot(self.ledger) == before
            return
        assert free is not None
        if amount > free:  # what was free before the top-up, not what it left
            assert result == Result.EXCEEDS_AVAILABLE
            assert snapshot(self.ledger) == before
            return
        assert result == Result.CREATED
        assert self.ledger.holds[hold.hold_id].amount_uait == hold.amount_uait + amount
        mid = snapshot(self.ledger)
        assert self.ledger.top_up(job_id, attempt, amount) == Result.EXISTS
        assert snapshot(self.ledger) == mid

    @rule(
        target=resolved,
        job_id=consumes(jobs),
        miner=st.sampled_from((*ADDRESSES, TREASURY_ADDRESS)),
        cost=st.integers(min_value=0, max_value=8_000_000),
        fee_bps=st.integers(min_value=0, max_value=10_000),
    )
    def post(self, job_id: str, miner: str, cost: int, fee_bps: int) -> str:
        hold = self.ledger.holds.get(hold_id_for(job_id))
        before = snapshot(self.ledger)
        settlement = self.ledger.post(job_id, miner, cost, fee_bps)
        if hold is None:
            assert settlement.result == Result.HOLD_NOT_FOUND
            assert snapshot(self.ledger) == before
            return job_id
        assert settlement.result == Result.CREATED
        assert settlement.charged_uait == min(cost, hold.amount_uait)
        assert settlement.paid_uait + settlement.fee_uait == settlement.charged_uait
        assert settlement.charged_uait + settlement.returned_uait == hold.amount_uait
        self.resolutions[job_id] = HoldStatus.POSTED
        # Replaying the same settlement changes nothing and says so.
        mid = snapshot(self.ledger)
        assert self.ledger.post(job_id, miner, cost, fee_bps).result == Result.EXISTS
        assert snapshot(self.ledger) == mid
        return job_id

    @rule(target=resolved, job_id=consumes(jobs))
    def void(self, job_id: str) -> str:
        hold = self.ledger.holds.get(hold_id_for(job_id))
        before = snapshot(self.ledger)
        settlement = self.ledger.void(job_id)
        if hold is None:
            assert settlement.result == Result.HOLD_NOT_FOUND
            assert snapshot(self.ledger) == before
            return job_id
        assert settlement.result == Result.CREATED
        assert settlement.returned_uait == hold.amount_uait
        self.resolutions[job_id] = HoldStatus.VOIDED
        return job_id

    @rule(job_id=resolved, kind=st.sampled_from(("post", "void", "post-other")))
    def resolve_again(self, job_id: str, kind: str) -> None:
        """A second, different resolution of a resolved hold never moves money."""
        before = snapshot(self.ledger)
        status = self.resolutions.get(job_id)
        if kind == "void":
            result = self.ledger.void(job_id).result
        else:
            cost = 10**7 if kind == "post-other" else 0
            result = self.ledger.post(job_id, ADDRESSES[0], cost, 0).result
        assert snapshot(self.ledger) == before
        if status is None:
            assert result == Result.HOLD_NOT_FOUND
        elif kind == "void" and status == HoldStatus.VOIDED:
            assert result == Result.EXISTS
        else:
            assert result in (
                Result.HOLD_ALREADY_RESOLVED,
                Result.EXISTS_WITH_DIFFERENT_FIELDS,
                Result.EXISTS,
            )  # (so not CREATED: nothing was written twice)

    @rule(chain=st.sampled_from(CHAINS), address=st.sampled_from(ADDRESSES), amount=amounts)
    def bad_requests_change_nothing(self, chain: str, address: str, amount: int) -> None:
        before = snapshot(self.ledger)
        assert self.ledger.mint("", chain, address, amount) == Result.ID_MUST_NOT_BE_EMPTY
        assert (
            self.ledger.mint("mint:neg", chain, address, -1 - amount)
            == Result.AMOUNT_MUST_NOT_BE_NEGATIVE
        )
        assert snapshot(self.ledger) == before

    @invariant()
    def sums_are_minted(self) -> None:
        for chain in CHAINS:
            accounts = {a: v for a, v in self.ledger.balances.items() if a.chain_id == chain}
            assert sum(accounts.values()) == 0
            assert self.ledger.minted(chain) == self.minted[chain]
            non_issuance = sum(v for a, v in accounts.items() if a.kind != "issuance")
            assert non_issuance == self.minted[chain]

    @invariant()
    def sound(self) -> None:
        assert self.ledger.check_invariants() == []

    @invariant()
    def holds_resolve_once(self) -> None:
        for job_id, status in self.resolutions.items():
            assert self.ledger.holds[hold_id_for(job_id)].status == status
            kinds = [
                t.kind.value
                for t in self.ledger.transfers.values()
                if t.hold_id == hold_id_for(job_id)
            ]
            assert ("void" in kinds) != ("pay" in kinds)


LedgerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLedger = LedgerMachine.TestCase


def test_copy_is_independent() -> None:
    """The snapshot helper really copies (so 'changes nothing' checks can fail)."""
    ledger = Ledger()
    ledger.mint("mint:1", "c", ADDRESSES[0], 5)
    before = snapshot(ledger)
    ledger.mint("mint:2", "c", ADDRESSES[0], 5)
    assert snapshot(ledger) != before
    assert copy.copy(before) == before
