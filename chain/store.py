"""Persistence of `chain.ledger`: its tables and the operations that apply its rules inside
the caller's transaction (so ledger rows commit together with the job status they belong
to).

Each operation loads exactly the rows its rule needs into a partial `Ledger` (accounts
locked `FOR UPDATE` on PostgreSQL, in a fixed order; SQLite's single writer serializes),
applies the pure rule, and writes what the rule changed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    bindparam,
    false,
    func,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from chain.ledger import (
    TREASURY_ADDRESS,
    AccountId,
    AccountKind,
    Hold,
    HoldStatus,
    Ledger,
    Result,
    Settlement,
    Transfer,
    TransferKind,
    available,
    escrow,
    hold_id_for,
    issuance,
    top_up_id_for,
)
from protocol.frozen import direct_init

metadata = MetaData()
_SEQ = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only

ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("chain_id", String(64), primary_key=True),
    Column("address", String(44), primary_key=True),
    Column("kind", String(16), primary_key=True),  # available | escrow | issuance
    Column("balance_uait", BigInteger, nullable=False),
)

# Every posted transfer, append-only. `seq` is the commit order within the database; the
# block sealer (coordinator.service.blocks) takes one chain's rows with `block_height IS
# NULL` in `seq` order, seals them into the next block and sets `block_height`. Nothing
# else ever updates a transfer row.
ledger_transfers = Table(
    "ledger_transfers",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("transfer_id", String(120), nullable=False, unique=True),
    Column("chain_id", String(64), nullable=False),
    Column("debit_address", String(44), nullable=False),
    Column("debit_kind", String(16), nullable=False),
    Column("credit_address", String(44), nullable=False),
    Column("credit_kind", String(16), nullable=False),
    Column("amount_uait", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),  # mint | hold | pay | fee | refund | void
    Column("job_id", String(40)),
    Column("hold_id", String(120)),  # for transfers that resolve a hold
    Column("created_at_ms", BigInteger, nullable=False),
    Column("block_height", BigInteger),
)


def partial_index(name: str, where: Any, *columns: Any) -> Index:
    """An index of only the rows `where` holds for, on SQLite and PostgreSQL alike (a
    dialect not named would silently get a full index). Queries use it only when they
    state the same predicate literally."""
    return Index(name, *columns, sqlite_where=where, postgresql_where=where)


# Only the unsealed rows, in the order the sealer takes them: stamping a block's transfers
# then drops their index entries instead of moving each to another key, which cut the
# stamp's SQL time by a third (docs/benchmarks.md, round 11). Schema version 2.
_UNSEALED = ledger_transfers.c.block_height.is_(None)
partial_index(
    "ix_transfers_unsealed", _UNSEALED, ledger_transfers.c.chain_id, ledger_transfers.c.seq
)
# A wallet's history reads each side of an address's transfers off an index in `seq`
# order: what it was debited, and what another address credited it (schema version 4
# made the credit index partial). A transfer between one address's own accounts (a hold,
# a refund) is on the debit side only, so the sides never overlap and their counts add
# up; a client's credits are mostly its own holds and refunds, which its credit side
# would otherwise walk past. On SQLite `seq` is the rowid, which ends every index entry:
# rows of one address and chain come in `seq` order. With an OR of the two addresses
# SQLite gathered every transfer of the address and sorted them for each page: a client's
# first page of 68,000 took 130-155 ms, on the event loop (docs/benchmarks.md, round 13).
FROM_ANOTHER = ledger_transfers.c.debit_address != ledger_transfers.c.credit_address
Index("ix_transfers_debit", ledger_transfers.c.debit_address, ledger_transfers.c.chain_id)
partial_index(
    "ix_transfers_credit",
    FROM_ANOTHER,
    ledger_transfers.c.credit_address,
    ledger_transfers.c.chain_id,
)

ledger_holds = Table(
    "ledger_holds",
    metadata,
    Column("hold_id", String(120), primary_key=True),
    Column("chain_id", String(64), nullable=False),
    Column("address", String(44), nullable=False),
    Column("amount_uait", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # pending | posted | voided
    Column("job_id", String(40)),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("resolved_at_ms", BigInteger),
)


# Statements are built once: building one (and its cache key) costs more than running it,
# and every settlement runs several.
_A = ledger_accounts.c
_ENSURE_ACCOUNTS = {
    "postgresql": pg_insert(ledger_accounts).on_conflict_do_nothing(),
    "sqlite": sqlite_insert(ledger_accounts).on_conflict_do_nothing(),
}


def padded(values: Sequence[Any]) -> list[Any]:
    """`values` repeated at the end up to the next power of two: statements built per
    number of parameters then come in a few sizes, so their compiled plans (and
    PostgreSQL's prepared statements) are reused rather than one per batch size."""
    size = 1 << max(0, len(values) - 1).bit_length()
    return [*values, *([values[-1]] * (size - len(values)))] if values else []


# Per number of accounts/ids (`padded`), built once. Plain bind parameters rather than an expanding
# IN list: an expanding list is re-rendered on every execution, and these run several
# times per job (docs/benchmarks.md).
@functools.cache
def _select_accounts(count: int) -> Any:
    return (
        select(_A.chain_id, _A.address, _A.kind, _A.balance_uait)
        .where(
            or_(
                *(
                    and_(
                        _A.chain_id == bindparam(f"c{i}"),
                        _A.address == bindparam(f"a{i}"),
                        _A.kind == bindparam(f"k{i}"),
                    )
                    for i in range(count)
                )
            )
        )
        .order_by(_A.chain_id, _A.address, _A.kind)
        .with_for_update()
    )


# Rows are unpacked by position: SQLAlchemy 2.1's Row attribute access costs ~1 us a
# name, by position ~0.07 (docs/benchmarks.md, round 8). Column lists fix the positions.
_T = ledger_transfers.c
_TRANSFER_COLUMNS = (
    _T.transfer_id, _T.chain_id, _T.debit_address, _T.debit_kind, _T.credit_address,
    _T.credit_kind, _T.amount_uait, _T.kind, _T.job_id, _T.hold_id, _T.created_at_ms,
)  # fmt: skip
_H = ledger_holds.c
_HOLD_COLUMNS = (_H.hold_id, _H.chain_id, _H.address, _H.amount_uait, _H.status, _H.job_id)


@functools.cache
def _select_transfers(count: int) -> Any:
    return select(*_TRANSFER_COLUMNS).where(
        ledger_transfers.c.transfer_id.in_([bindparam(f"t{i}") for i in range(count)])
    )


_SET_BALANCE = (
    update(ledger_accounts)
    .where(
        _A.chain_id == bindparam("b_chain"),
        _A.address == bindparam("b_address"),
        _A.kind == bindparam("b_kind"),
    )
    .values(balance_uait=bindparam("b_balance"))
)
_INSERT_TRANSFERS = ledger_transfers.insert()
_SELECT_HOLD = (
    select(*_HOLD_COLUMNS).where(ledger_holds.c.hold_id == bindparam("h_id")).with_for_update()
)


@functools.cache
def _select_holds(count: int) -> Any:
    return (
        select(*_HOLD_COLUMNS)
        .where(ledger_holds.c.hold_id.in_([bindparam(f"h{i}") for i in range(count)]))
        .order_by(ledger_holds.c.hold_id)
        .with_for_update()
    )


_INSERT_HOLD = ledger_holds.insert()
_RESOLVE_HOLD = (
    update(ledger_holds)
    .where(ledger_holds.c.hold_id == bindparam("h_id"))
    .values(status=bindparam("h_status"), resolved_at_ms=bindparam("h_at"))
)
_GROW_HOLD = (
    update(ledger_holds)
    .where(ledger_holds.c.hold_id == bindparam("h_id"))
    .values(amount_uait=bindparam("h_amount"))
)


def transfer_from_row(row: Any) -> Transfer:
    """A transfer from a row of `_TRANSFER_COLUMNS`."""
    (transfer_id, chain_id, debit_address, debit_kind, credit_address, credit_kind,
     amount_uait, kind, job_id, hold_id, created_at_ms) = row  # fmt: skip
    return Transfer(
        transfer_id=transfer_id,
        chain_id=chain_id,
        debit=AccountId(chain_id, debit_address, AccountKind(debit_kind)),
        credit=AccountId(chain_id, credit_address, AccountKind(credit_kind)),
        amount_uait=amount_uait,
        kind=TransferKind(kind),
        job_id=job_id,
        hold_id=hold_id,
        created_at_ms=created_at_ms,
    )


async def _load(
    conn: AsyncConnection,
    accounts: Iterable[AccountId],
    transfer_ids: Iterable[str],
    holds: Sequence[Hold] = (),
) -> Ledger:
    ledger = Ledger(holds={h.hold_id: h for h in holds})
    wanted = sorted(set(accounts))  # one lock order everywhere: no deadlock between ours
    if wanted:
        await _read_accounts(conn, wanted, ledger)
        missing = [a for a in wanted if a not in ledger.balances]
        if missing:  # first use of an account: create it, then read (and lock) again
            await conn.execute(
                _ENSURE_ACCOUNTS[conn.dialect.name],
                [_empty_account_row(a) for a in missing],
            )
            await _read_accounts(conn, wanted, ledger)
    ids = padded(sorted(set(transfer_ids)))
    if ids:
        params = {f"t{i}": transfer_id for i, transfer_id in enumerate(ids)}
        for row in await conn.execute(_select_transfers(len(ids)), params):
            ledger.transfers[row[0]] = transfer_from_row(row)
    return ledger


def _empty_account_row(account: AccountId) -> dict[str, Any]:
    return {
        "chain_id": account.chain_id,
        "address": account.address,
        "kind": account.kind,
        "balance_uait": 0,
    }


async def _read_accounts(conn: AsyncConnection, wanted: list[AccountId], ledger: Ledger) -> None:
    params: dict[str, str] = {}
    asked = padded(wanted)
    for i, a in enumerate(asked):
        params.update({f"c{i}": a.chain_id, f"a{i}": a.address, f"k{i}": a.kind.value})
    for chain_id, address, kind, balance_uait in await conn.execute(
        _select_accounts(len(asked)), params
    ):
        ledger.balances[AccountId(chain_id, address, AccountKind(kind))] = balance_uait


def _hold_from_row(row: Any) -> Hold:
    """A hold from a row of `_HOLD_COLUMNS`."""
    hold_id, chain_id, address, amount_uait, status, job_id = row
    return Hold(hold_id, chain_id, address, amount_uait, HoldStatus(status), job_id)


async def _load_hold(conn: AsyncConnection, hold_id: str) -> Hold | None:
    row = (await conn.execute(_SELECT_HOLD, {"h_id": hold_id})).first()
    return None if row is None else _hold_from_row(row)


async def _load_holds(conn: AsyncConnection, hold_ids: Iterable[str]) -> dict[str, Hold]:
    """The holds that exist among `hold_ids`, locked (in id order) on PostgreSQL."""
    ids = padded(sorted(set(hold_ids)))
    if not ids:
        return {}
    params = {f"h{i}": hold_id for i, hold_id in enumerate(ids)}
    rows = await conn.execute(_select_holds(len(ids)), params)
    return {row[0]: _hold_from_row(row) for row in rows}


async def _save(conn: AsyncConnection, ledger: Ledger, now_ms: int) -> None:
    if ledger.new_transfers:
        await conn.execute(
            _INSERT_TRANSFERS,
            [
                {
                    "transfer_id": t.transfer_id,
                    "chain_id": t.chain_id,
                    "debit_address": t.debit.address,
                    "debit_kind": t.debit.kind.value,
                    "credit_address": t.credit.address,
                    "credit_kind": t.credit.kind.value,
                    "amount_uait": t.amount_uait,
                    "kind": t.kind.value,
                    "job_id": t.job_id,
                    "hold_id": t.hold_id,
                    "created_at_ms": t.created_at_ms,
                }
                for t in ledger.new_transfers
            ],
        )
    if ledger.changed_accounts:
        await conn.execute(
            _SET_BALANCE,
            [
                {
                    "b_chain": a.chain_id,
                    "b_address": a.address,
                    "b_kind": a.kind.value,
                    "b_balance": ledger.balance(a),
                }
                for a in sorted(ledger.changed_accounts)
            ],
        )
    changed = [ledger.holds[hold_id] for hold_id in sorted(ledger.changed_holds)]
    created = [
        {
            "hold_id": hold.hold_id,
            "chain_id": hold.chain_id,
            "address": hold.address,
            "amount_uait": hold.amount_uait,
            "status": hold.status.value,
            "job_id": hold.job_id,
            "created_at_ms": now_ms,
        }
        for hold in changed
        if hold.status == HoldStatus.PENDING
    ]
    if created:
        await conn.execute(_INSERT_HOLD, created)
    resolved = [
        {"h_id": hold.hold_id, "h_status": hold.status.value, "h_at": now_ms}
        for hold in changed
        if hold.status != HoldStatus.PENDING
    ]
    if resolved:
        await conn.execute(_RESOLVE_HOLD, resolved)
    for hold_id in sorted(ledger.grown_holds):
        amount = ledger.holds[hold_id].amount_uait
        await conn.execute(_GROW_HOLD, {"h_id": hold_id, "h_amount": amount})


# -- operations (each inside the caller's transaction) ---------------------------------------
async def mint(
    conn: AsyncConnection,
    transfer_id: str,
    chain_id: str,
    address: str,
    amount_uait: int,
    now_ms: int,
) -> Result:
    ledger = await _load(conn, [issuance(chain_id), available(chain_id, address)], [transfer_id])
    result = ledger.mint(transfer_id, chain_id, address, amount_uait, now_ms)
    await _save(conn, ledger, now_ms)
    return result


@direct_init
@dataclass(frozen=True)
class HoldRequest:
    """Move `amount_uait` of `address`'s available balance into escrow for `job_id`."""

    job_id: str
    chain_id: str
    address: str
    amount_uait: int


async def hold(
    conn: AsyncConnection, job_id: str, chain_id: str, address: str, amount_uait: int, now_ms: int
) -> Result:
    [result] = await hold_many(conn, [HoldRequest(job_id, chain_id, address, amount_uait)], now_ms)
    return result


async def hold_many(
    conn: AsyncConnection, requests: Sequence[HoldRequest], now_ms: int
) -> list[Result]:
    """Several holds with one statement per table, applied in order (a refused one changes
    nothing; a later one of the same client sees what the earlier ones took)."""
    accounts: list[AccountId] = []
    for r in requests:
        accounts += [available(r.chain_id, r.address), escrow(r.chain_id, r.address)]
    # A replay is answered from the transfer id alone; the hold row is not needed.
    ledger = await _load(conn, accounts, [hold_id_for(r.job_id) for r in requests])
    results = [
        ledger.hold(r.job_id, r.chain_id, r.address, r.amount_uait, now_ms) for r in requests
    ]
    await _save(conn, ledger, now_ms)
    return results


async def top_up(
    conn: AsyncConnection, job_id: str, attempt: int, amount_uait: int, now_ms: int
) -> Result:
    """Grow a job's pending hold by `amount_uait` at its `attempt`-th claim (a miner priced
    above the escrow took it); `exceeds_available` when the client cannot cover it."""
    held = await _load_hold(conn, hold_id_for(job_id))
    if held is None:
        return Result.HOLD_NOT_FOUND
    accounts = [available(held.chain_id, held.address), escrow(held.chain_id, held.address)]
    ledger = await _load(conn, accounts, [top_up_id_for(job_id, attempt)], [held])
    result = ledger.top_up(job_id, attempt, amount_uait, now_ms)
    await _save(conn, ledger, now_ms)
    return result


@direct_init
@dataclass(frozen=True)
class PostRequest:
    """One completed job's settlement: pay `miner_address` the metered cost (capped at the
    hold), less `fee_bps` to the treasury; the rest back to the client."""

    job_id: str
    miner_address: str
    cost_uait: int
    fee_bps: int


async def post(
    conn: AsyncConnection,
    job_id: str,
    miner_address: str,
    cost_uait: int,
    fee_bps: int,
    now_ms: int,
) -> Settlement:
    """Settle a completed job's hold: miner paid (capped), fee, rest back to the client."""
    [settlement] = await post_many(
        conn, [PostRequest(job_id, miner_address, cost_uait, fee_bps)], now_ms
    )
    return settlement


async def post_many(
    conn: AsyncConnection, requests: Sequence[PostRequest], now_ms: int
) -> list[Settlement]:
    """Settle several jobs' holds with one statement per table however many there are
    (the jobs of one client or one miner share accounts: each is read and written once).
    Each request is its own linked post: one that is refused changes nothing, the others
    still apply. Settlements in request order."""
    holds = await _load_holds(conn, [hold_id_for(r.job_id) for r in requests])
    accounts: list[AccountId] = []
    ids: list[str] = []
    for r in requests:
        held = holds.get(hold_id_for(r.job_id))
        if held is None:
            continue
        accounts += [
            escrow(held.chain_id, held.address),
            available(held.chain_id, held.address),
            available(held.chain_id, r.miner_address),
            available(held.chain_id, TREASURY_ADDRESS),
        ]
        # A pending hold has none of its post's transfers: they are written with the hold's
        # new status, in one transaction (`_save`). Only a resolved hold's are read, which
        # tell a replay (`exists`) from a conflict; a settlement skips that read (round 22).
        if held.status != HoldStatus.PENDING:
            ids += [f"{kind}:{r.job_id}" for kind in ("pay", "fee", "refund")]
    ledger = await _load(conn, accounts, ids, list(holds.values()))
    settlements = [
        ledger.post(r.job_id, r.miner_address, r.cost_uait, r.fee_bps, now_ms) for r in requests
    ]
    await _save(conn, ledger, now_ms)
    return settlements


async def void(conn: AsyncConnection, job_id: str, now_ms: int) -> Settlement:
    """Return a job's whole hold to the client."""
    held = await _load_hold(conn, hold_id_for(job_id))
    if held is None:
        return Settlement(Result.HOLD_NOT_FOUND)
    accounts = [escrow(held.chain_id, held.address), available(held.chain_id, held.address)]
    ledger = await _load(conn, accounts, [f"void:{job_id}"], [held])
    settlement = ledger.void(job_id, now_ms)
    await _save(conn, ledger, now_ms)
    return settlement


# -- reads ----------------------------------------------------------------------------------
@direct_init
@dataclass(frozen=True)
class Balance:
    available_uait: int
    held_uait: int

    @property
    def total_uait(self) -> int:
        return self.available_uait + self.held_uait


# One statement object, so its plan is prepared once (coordinator.db.prepared); a select
# built per call missed that cache and was compiled by SQLAlchemy each time (a batch
# submit checks the balance: ~4% of the coordinator with a thousand one-job clients).
_BALANCE = select(_A.kind, _A.balance_uait).where(
    _A.chain_id == bindparam("chain_id"), _A.address == bindparam("address")
)


async def balance(conn: AsyncConnection, chain_id: str, address: str) -> Balance:
    rows = await conn.execute(_BALANCE, {"chain_id": chain_id, "address": address})
    values = {row.kind: row.balance_uait for row in rows}
    return Balance(values.get("available", 0), values.get("escrow", 0))


async def available_balances(
    conn: AsyncConnection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """(chain_id, address) -> available uAIT, for each key asked (0 without an account)."""
    wanted = sorted(set(keys))
    found = dict.fromkeys(wanted, 0)
    if wanted:
        rows = await conn.execute(
            select(_A.chain_id, _A.address, _A.balance_uait).where(
                tuple_(_A.chain_id, _A.address, _A.kind).in_(
                    [(chain, address, AccountKind.AVAILABLE.value) for chain, address in wanted]
                )
            )
        )
        for row in rows:
            found[(row.chain_id, row.address)] = row.balance_uait
    return found


def _sides(address: str | BindParameter[str]) -> tuple[tuple[ColumnElement[bool], ...], ...]:
    """The two sides of an address's transfers, each as its index states it: what it was
    debited, and what another address credited it."""
    t = ledger_transfers.c
    return (t.debit_address == address,), (t.credit_address == address, FROM_ANOTHER)


# One step of `address_chains` per side: the side's first chain after `after`.
ADDRESS_CHAIN_STEPS = [
    select(ledger_transfers.c.chain_id)
    .where(*side, ledger_transfers.c.chain_id > bindparam("after"))
    .order_by(ledger_transfers.c.chain_id)
    .limit(1)
    for side in _sides(bindparam("address", type_=String))
]


async def address_chains(conn: AsyncConnection, address: str) -> list[str]:
    """The chains on which `address` has transfers, each side's read off its index one
    chain at a time (a seek per chain, however long the history)."""
    found: set[str] = set()
    for statement in ADDRESS_CHAIN_STEPS:
        after = ""
        while (
            chain := (await conn.execute(statement, {"address": address, "after": after})).scalar()
        ) is not None:
            found.add(chain)
            after = chain
    return sorted(found)


def _history_filters(
    chain_id: str | None, from_ms: int | None, to_ms: int | None
) -> list[ColumnElement[bool]]:
    t = ledger_transfers.c
    common = []
    if chain_id is not None:
        common.append(t.chain_id == chain_id)
    if from_ms is not None:
        common.append(t.created_at_ms >= from_ms)
    if to_ms is not None:
        common.append(t.created_at_ms < to_ms)
    return common


def history_count(
    address: str, chain_id: str | None, from_ms: int | None, to_ms: int | None
) -> Select[Any]:
    """One row: how many transfers touch `address` (with the filters) and, with a time
    range, the lowest and highest `seq` among them (None when there are none, or no range).

    Each side is read off its index once (with a range, count, min and max in the same
    pass) and the two sides added up. It grows with the address's history: callers run it
    off the event loop (`Database.read_long`). The span lets `history_page` seek to the
    rows a time range holds instead of walking the newer ones (see there); without a
    range it is not needed, and a bare count of the index entries takes half as long."""
    t = ledger_transfers.c
    common = _history_filters(chain_id, from_ms, to_ms)
    if from_ms is None and to_ms is None:
        counts = [
            select(func.count()).select_from(ledger_transfers).where(*side, *common)
            for side in _sides(address)
        ]
        return select(counts[0].scalar_subquery() + counts[1].scalar_subquery(), null(), null())
    sides = union_all(
        *(
            select(
                func.count().label("n"), func.min(t.seq).label("lo"), func.max(t.seq).label("hi")
            ).where(*side, *common)
            for side in _sides(address)
        )
    ).subquery()
    return select(func.coalesce(func.sum(sides.c.n), 0), func.min(sides.c.lo), func.max(sides.c.hi))


def history_page(
    dialect: str,
    address: str,
    chain_id: str | None,
    from_ms: int | None,
    to_ms: int | None,
    limit: int,
    offset: int,
    chains: Sequence[str] | None = None,
    seqs: tuple[int, int] | None = None,
) -> Select[Any]:
    """A page of the transfers touching `address`, newest first, on `dialect`; `seqs`,
    the (lowest, highest) `seq` that `history_count` found under the same filters, bounds
    the read.

    On SQLite a page takes each side's newest `limit + offset` off its index and cuts the
    page from them: SQLite answers an OR of the sides by gathering and sorting all of them.
    The indexes give `seq` order within a chain, so without `chain_id` it takes them per
    chain of `chains` (`address_chains`); given neither, each side sorts all of the
    address's rows (a client's first page of 54,000 transfers: 28 ms on the event loop,
    against 0.6 with a chain; docs/benchmarks.md, round 19). With a time range, the index
    walk from the newest would pass every newer transfer before the first in range (25-28
    ms for an early range of 66,000, on the loop; round 21): the `seqs` bounds make it a
    seek to the range's newest. PostgreSQL gets the OR, which it plans by its statistics
    (the pkey walked backwards for a busy address, a bitmap of both indexes for a rare
    one); side by side, a side with few rows that it guessed would have many sent it
    walking the whole table. Given `seqs`, PostgreSQL walks the primary key over that
    span, every address's transfers in it, so the service passes them on SQLite only."""
    t = ledger_transfers.c
    common = _history_filters(chain_id, from_ms, to_ms)
    if seqs is not None:
        common += [t.seq >= seqs[0], t.seq <= seqs[1]]
    debits, credits = _sides(address)
    touching: ColumnElement[bool]
    if dialect == "sqlite":
        per_chain = [()] if chain_id is not None or chains is None else [
            (t.chain_id == chain,) for chain in chains
        ]  # fmt: skip
        newest = [
            select(t.seq)
            .where(*side, *in_chain, *common)
            .order_by(t.seq.desc())
            .limit(limit + offset)
            for side in (debits, credits)
            for in_chain in per_chain
        ]
        touching = (
            t.seq.in_(union_all(*(select(s.subquery().c.seq) for s in newest)))
            if newest
            else false()
        )
    else:
        touching = and_(or_(and_(*debits), and_(*credits)), *common)
    return (
        select(*_TRANSFER_COLUMNS)
        .where(touching)
        .order_by(t.seq.desc())
        .limit(limit)
        .offset(offset)
    )


async def minted(conn: AsyncConnection, chain_id: str) -> int:
    value = (
        await conn.execute(
            select(ledger_accounts.c.balance_uait).where(
                ledger_accounts.c.chain_id == chain_id,
                ledger_accounts.c.kind == AccountKind.ISSUANCE.value,
            )
        )
    ).scalar()
    return -(value or 0)
