"""Double-entry ledger rules with escrow, pure (no I/O); `chain.store` persists them.

Accounts are `(chain_id, address, kind)`. Every change is a `Transfer` from a debit account
to a credit account, so per chain the balances of all accounts sum to zero: minting moves
money out of the chain's issuance account (which alone may go negative), and "minted" is
minus its balance. Amounts are integer micro-AIT, never negative.

Two-phase job payments, with deterministic, idempotent transfer ids per job:

```
submit   hold:{job}      client/available ─▶ client/escrow      (Hold: pending)
claim    hold:{job}:{n}  client/available ─▶ client/escrow      (top-up: the Hold grows)
complete pay:{job}       client/escrow    ─▶ miner/available    charge - fee
         fee:{job}       client/escrow    ─▶ treasury/available charge × fee_bps / 10000
         refund:{job}    client/escrow    ─▶ client/available   held - charge
                                                                (Hold: posted)
cancel / fail / time-out
         void:{job}      client/escrow    ─▶ client/available   held   (Hold: voided)
faucet   mint:{uuid}     issuance         ─▶ address/available
```
A top-up (`hold:{job}:{n}`, at most one per claim `n`) grows a pending hold when a claim
goes to a miner whose price for the job is above what is held; `held` is then the hold's
whole amount, released once by its post or void. `charge` is the metered cost capped at
`held`. The fee is taken out of the charge (the client never pays more than the escrow).
`pay` and `void` are written even for zero amounts so every settled job appears in the
block log; `fee` and `refund` only when non-zero.

Results are values (TigerBeetle's `create_transfers` style). Checks run in this order and
the first that fails is the answer:

1. `id_must_not_be_empty`, `amount_must_not_be_negative`, `amount_too_large`,
   `accounts_must_be_different`, `accounts_must_be_on_transfer_chain`,
   `accounts_do_not_fit_kind`                    (the request alone is malformed)
2. `exists` (same fields: nothing changes) / `exists_with_different_fields`
3. `hold_not_found`, `hold_already_resolved`     (post, void and top-up only; a top-up
                                                 takes its accounts from its hold, so for it
                                                 `hold_not_found` comes first, and a hold
                                                 grown past the maximum amount answers
                                                 `amount_too_large` after `exists`)
4. `exceeds_available`                           (a hold larger than the available balance)
5. `created`
A post or void is linked: all its transfers are created, or none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from protocol.frozen import direct_init
from protocol.money import MAX_AMOUNT_UAIT

TREASURY_ADDRESS = "ait1" + "0" * 40  # receives protocol fees
ISSUANCE_ADDRESS = "ait1" + "0" * 39 + "1"  # the issuance account's address on every chain
BPS = 10_000


class AccountKind(StrEnum):
    AVAILABLE = "available"
    ESCROW = "escrow"
    ISSUANCE = "issuance"


class TransferKind(StrEnum):
    MINT = "mint"
    HOLD = "hold"
    PAY = "pay"
    FEE = "fee"
    REFUND = "refund"
    VOID = "void"


class HoldStatus(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"


class Result(StrEnum):
    CREATED = "created"
    ID_MUST_NOT_BE_EMPTY = "id_must_not_be_empty"
    AMOUNT_MUST_NOT_BE_NEGATIVE = "amount_must_not_be_negative"
    AMOUNT_TOO_LARGE = "amount_too_large"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    ACCOUNTS_MUST_BE_ON_TRANSFER_CHAIN = "accounts_must_be_on_transfer_chain"
    ACCOUNTS_DO_NOT_FIT_KIND = "accounts_do_not_fit_kind"
    EXISTS = "exists"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_ALREADY_RESOLVED = "hold_already_resolved"
    EXCEEDS_AVAILABLE = "exceeds_available"

    @property
    def ok(self) -> bool:
        """True when the ledger now holds what was asked (created now or before)."""
        return self in (Result.CREATED, Result.EXISTS)


# Account ids, transfers and holds are named tuples, not frozen dataclasses: a settlement
# makes ~10 ids and 3 transfers and looks ids up ~20 times in dicts and sets, and tuples
# hash, compare and construct in C (a dict lookup 0.43 -> 0.06 us; docs/benchmarks.md,
# round 22). Each is still immutable, ordered and equal by value.
class AccountId(NamedTuple):
    chain_id: str
    address: str
    kind: AccountKind


def available(chain_id: str, address: str) -> AccountId:
    return AccountId(chain_id, address, AccountKind.AVAILABLE)


def escrow(chain_id: str, address: str) -> AccountId:
    return AccountId(chain_id, address, AccountKind.ESCROW)


def issuance(chain_id: str) -> AccountId:
    return AccountId(chain_id, ISSUANCE_ADDRESS, AccountKind.ISSUANCE)


def hold_id_for(job_id: str) -> str:
    return f"hold:{job_id}"


def top_up_id_for(job_id: str, attempt: int) -> str:
    """The transfer that grows a job's hold at its `attempt`-th claim."""
    return f"hold:{job_id}:{attempt}"


class Transfer(NamedTuple):
    transfer_id: str
    chain_id: str
    debit: AccountId
    credit: AccountId
    amount_uait: int
    kind: TransferKind
    job_id: str | None = None
    hold_id: str | None = None  # the hold a pay/fee/refund/void resolves or a top-up grows
    created_at_ms: int = 0

    def same_as(self, other: Transfer) -> bool:
        """Equal in every field a retry must repeat (the time is not one of them)."""
        return self._replace(created_at_ms=0) == other._replace(created_at_ms=0)


class Hold(NamedTuple):
    hold_id: str
    chain_id: str
    address: str  # the client whose escrow it is
    amount_uait: int
    status: HoldStatus
    job_id: str | None = None


@direct_init
@dataclass(frozen=True)
class Settlement:
    """What a post or void did (or would do, on `exists`)."""

    result: Result
    charged_uait: int = 0  # debited from the client's escrow towards miner + fee
    fee_uait: int = 0
    paid_uait: int = 0  # to the miner
    returned_uait: int = 0  # back to the client's available balance
    transfers: tuple[Transfer, ...] = ()


def _validate(t: Transfer) -> Result | None:
    if not t.transfer_id:
        return Result.ID_MUST_NOT_BE_EMPTY
    if t.amount_uait < 0:
        return Result.AMOUNT_MUST_NOT_BE_NEGATIVE
    if t.amount_uait > MAX_AMOUNT_UAIT:
        return Result.AMOUNT_TOO_LARGE
    if t.debit == t.credit:
        return Result.ACCOUNTS_MUST_BE_DIFFERENT
    if t.debit.chain_id != t.chain_id or t.credit.chain_id != t.chain_id:
        return Result.ACCOUNTS_MUST_BE_ON_TRANSFER_CHAIN
    if not _fits_kind(t):
        return Result.ACCOUNTS_DO_NOT_FIT_KIND
    return None


def _fits_kind(t: Transfer) -> bool:
    d, c = t.debit.kind, t.credit.kind
    if AccountKind.ISSUANCE in (d, c) and t.kind != TransferKind.MINT:
        return False
    if t.kind == TransferKind.MINT:
        return t.debit == issuance(t.chain_id) and c == AccountKind.AVAILABLE
    if t.kind == TransferKind.HOLD:
        same_owner = t.debit.address == t.credit.address
        return same_owner and d == AccountKind.AVAILABLE and c == AccountKind.ESCROW
    # pay, fee, refund, void: out of an escrow into an available account
    return d == AccountKind.ESCROW and c == AccountKind.AVAILABLE and t.hold_id is not None


@dataclass
class Ledger:
    """Balances, transfers and holds, complete or (in `chain.store`) the rows one operation
    needs. Records what changed so a store can write exactly that."""

    balances: dict[AccountId, int] = field(default_factory=dict)
    transfers: dict[str, Transfer] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    new_transfers: list[Transfer] = field(default_factory=list)
    changed_accounts: set[AccountId] = field(default_factory=set)
    changed_holds: set[str] = field(default_factory=set)  # created or resolved
    grown_holds: set[str] = field(default_factory=set)  # amount raised by a top-up

    def balance(self, account: AccountId) -> int:
        return self.balances.get(account, 0)

    def _post(self, t: Transfer) -> None:
        self.balances[t.debit] = self.balance(t.debit) - t.amount_uait
        self.balances[t.credit] = self.balance(t.credit) + t.amount_uait
        self.changed_accounts.update((t.debit, t.credit))
        self.transfers[t.transfer_id] = t
        self.new_transfers.append(t)

    def _existing(self, t: Transfer) -> Result | None:
        old = self.transfers.get(t.transfer_id)
        if old is None:
            return None
        return Result.EXISTS if old.same_as(t) else Result.EXISTS_WITH_DIFFERENT_FIELDS

    # -- single transfers -------------------------------------------------------------
    def mint(
        self, transfer_id: str, chain_id: str, address: str, amount_uait: int, now_ms: int = 0
    ) -> Result:
        t = Transfer(
            transfer_id,
            chain_id,
            issuance(chain_id),
            available(chain_id, address),
            amount_uait,
            TransferKind.MINT,
            created_at_ms=now_ms,
        )
        problem = _validate(t) or self._existing(t)
        if problem is not None:
            return problem
        self._post(t)
        return Result.CREATED

    def hold(
        self, job_id: str, chain_id: str, address: str, amount_uait: int, now_ms: int = 0
    ) -> Result:
        hold_id = hold_id_for(job_id)
        t = Transfer(
            hold_id,
            chain_id,
            available(chain_id, address),
            escrow(chain_id, address),
            amount_uait,
            TransferKind.HOLD,
            job_id=job_id,
            created_at_ms=now_ms,
        )
        problem = _validate(t) or self._existing(t)
        if problem is not None:
            return problem
        if self.balance(t.debit) < amount_uait:
            return Result.EXCEEDS_AVAILABLE
        self._post(t)
        self.holds[hold_id] = Hold(
            hold_id, chain_id, address, amount_uait, HoldStatus.PENDING, job_id
        )
        self.changed_holds.add(hold_id)
        return Result.CREATED

    def top_up(self, job_id: str, attempt: int, amount_uait: int, now_ms: int = 0) -> Result:
        """Grow a job's pending hold by `amount_uait` (client available -> escrow): its
        `attempt`-th claim went to a miner whose price for it is above what is held."""
        hold_id = hold_id_for(job_id)
        hold = self.holds.get(hold_id)
        if hold is None:
            return Result.HOLD_NOT_FOUND
        t = Transfer(
            top_up_id_for(job_id, attempt),
            hold.chain_id,
            available(hold.chain_id, hold.address),
            escrow(hold.chain_id, hold.address),
            amount_uait,
            TransferKind.HOLD,
            job_id=job_id,
            hold_id=hold_id,
            created_at_ms=now_ms,
        )
        problem = _validate(t) or self._existing(t)
        if problem is not None:
            return problem
        if hold.amount_uait + amount_uait > MAX_AMOUNT_UAIT:
            return Result.AMOUNT_TOO_LARGE
        if hold.status != HoldStatus.PENDING:
            return Result.HOLD_ALREADY_RESOLVED
        if self.balance(t.debit) < amount_uait:
            return Result.EXCEEDS_AVAILABLE
        self._post(t)
        self.holds[hold_id] = hold._replace(amount_uait=hold.amount_uait + amount_uait)
        self.grown_holds.add(hold_id)
        return Result.CREATED

    # -- resolving holds ----------------------------------------------------------------
    def post(
        self,
        job_id: str,
        miner_address: str,
        cost_uait: int,
        fee_bps: int,
        now_ms: int = 0,
    ) -> Settlement:
        """Pay the miner the metered cost capped at the hold; fee to the treasury; the rest
        back to the client."""
        hold = self.holds.get(hold_id_for(job_id))
        if hold is None:
            return Settlement(Result.HOLD_NOT_FOUND)
        charged = max(0, min(cost_uait, hold.amount_uait))
        fee = charged * max(0, min(fee_bps, BPS)) // BPS
        returned = hold.amount_uait - charged
        parts = [self._part(hold, TransferKind.PAY, miner_address, charged - fee, now_ms)]
        if fee:
            parts.append(self._part(hold, TransferKind.FEE, TREASURY_ADDRESS, fee, now_ms))
        if returned:
            parts.append(self._part(hold, TransferKind.REFUND, hold.address, returned, now_ms))
        result = self._resolve(hold, parts, HoldStatus.POSTED)
        return Settlement(result, charged, fee, charged - fee, returned, tuple(parts))

    def void(self, job_id: str, now_ms: int = 0) -> Settlement:
        """Return the whole hold to the client (cancel, failure, time-out)."""
        hold = self.holds.get(hold_id_for(job_id))
        if hold is None:
            return Settlement(Result.HOLD_NOT_FOUND)
        part = self._part(hold, TransferKind.VOID, hold.address, hold.amount_uait, now_ms)
        result = self._resolve(hold, [part], HoldStatus.VOIDED)
        return Settlement(result, 0, 0, 0, hold.amount_uait, (part,))

    def _part(
        self, hold: Hold, kind: TransferKind, to_address: str, amount: int, now_ms: int
    ) -> Transfer:
        job = hold.job_id or hold.hold_id
        return Transfer(
            f"{kind.value}:{job}",
            hold.chain_id,
            escrow(hold.chain_id, hold.address),
            available(hold.chain_id, to_address),
            amount,
            kind,
            job_id=hold.job_id,
            hold_id=hold.hold_id,
            created_at_ms=now_ms,
        )

    def _resolve(self, hold: Hold, parts: list[Transfer], status: HoldStatus) -> Result:
        for part in parts:
            problem = _validate(part)
            if problem is not None:
                return problem
        existing = [self._existing(p) for p in parts]
        if any(e is not None for e in existing):
            if all(e == Result.EXISTS for e in existing) and hold.status == status:
                return Result.EXISTS
            return Result.EXISTS_WITH_DIFFERENT_FIELDS
        if hold.status != HoldStatus.PENDING:
            return Result.HOLD_ALREADY_RESOLVED
        # The parts sum to the hold by construction; the escrow holds at least that.
        assert sum(p.amount_uait for p in parts) == hold.amount_uait
        for part in parts:
            self._post(part)
        self.holds[hold.hold_id] = hold._replace(status=status)
        self.changed_holds.add(hold.hold_id)
        return Result.CREATED

    # -- invariants ---------------------------------------------------------------------
    def minted(self, chain_id: str) -> int:
        return -self.balance(issuance(chain_id))

    def check_invariants(self) -> list[str]:
        """Every violated invariant as a sentence (empty when the ledger is sound). Only
        meaningful on a complete ledger, not on a store's partial view."""
        problems: list[str] = []
        chains = {a.chain_id for a in self.balances}
        for chain_id in sorted(chains):
            total = sum(v for a, v in self.balances.items() if a.chain_id == chain_id)
            if total != 0:
                problems.append(f"{chain_id}: accounts sum to {total}, not 0")
        for account, value in self.balances.items():
            if account.kind != AccountKind.ISSUANCE and value < 0:
                problems.append(f"{account}: negative balance {value}")
        pending: dict[AccountId, int] = {}
        for hold in self.holds.values():
            if hold.status == HoldStatus.PENDING:
                key = escrow(hold.chain_id, hold.address)
                pending[key] = pending.get(key, 0) + hold.amount_uait
        for account, value in self.balances.items():
            if account.kind == AccountKind.ESCROW and value != pending.get(account, 0):
                expected = pending.get(account, 0)
                problems.append(f"{account}: escrow {value} != pending holds {expected}")
        return problems


def accounts_touched(transfers: Iterable[Transfer]) -> set[AccountId]:
    out: set[AccountId] = set()
    for t in transfers:
        out.update((t.debit, t.credit))
    return out
