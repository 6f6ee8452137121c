"""Wallet reads and the faucet."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from chain import store as ledger_store
from chain.ledger import Result, Transfer
from coordinator.errors import FaucetDisabled, Forbidden, NotFound, ValidationFailed
from coordinator.service.core import Core
from coordinator.service.keys import ApiKey
from protocol.keys import is_address
from protocol.money import uait_to_ait
from protocol.timefmt import iso_ms, now_ms

FAUCET_MAX_UAIT = 1000 * 1_000_000  # SPEC §3: up to 1000 AIT a request


def chain_or_422(core: Core, chain_id: str | None, field: str = "chain_id") -> str:
    chain_id = chain_id or core.settings.default_chain
    if core.settings.chain(chain_id) is None:
        known = ", ".join(c.id for c in core.settings.chains)
        raise ValidationFailed([(field, f"unknown chain {chain_id[:64]!r}; known: {known}")])
    return chain_id


def may_read(key: ApiKey, address: str) -> None:
    if not is_address(address):
        raise NotFound(f"{address[:64]!r} is not an address (ait1 + 40 lower-case hex)")
    if key.role != "admin" and key.address != address:
        raise Forbidden("a key may read only its own address's wallet (admins any)")


async def balance(core: Core, key: ApiKey, address: str, chain_id: str | None) -> dict[str, Any]:
    may_read(key, address)
    chain_id = chain_or_422(core, chain_id)
    async with core.db.read() as conn:
        bal = await ledger_store.balance(conn, chain_id, address)
    return {
        "address": address,
        "chain_id": chain_id,
        "balance": uait_to_ait(bal.total_uait),
        "held": uait_to_ait(bal.held_uait),
        "available": uait_to_ait(bal.available_uait),
        "balance_uait": bal.total_uait,
        "held_uait": bal.held_uait,
        "available_uait": bal.available_uait,
    }


def entry_view(t: Transfer, address: str) -> dict[str, Any]:
    incoming = t.credit.address == address
    mine, other = (t.credit, t.debit) if incoming else (t.debit, t.credit)
    # A hold moves money between two accounts of the same address.
    if t.debit.address == t.credit.address:
        mine, other = t.debit, t.credit
    return {
        "transfer_id": t.transfer_id,
        "kind": t.kind.value,
        "chain_id": t.chain_id,
        "job_id": t.job_id,
        "amount": uait_to_ait(t.amount_uait),
        "amount_uait": t.amount_uait,
        "direction": "in" if incoming and t.debit.address != address else "out",
        "account": mine.kind.value,
        "counterparty": {"address": other.address, "kind": other.kind.value},
        "debit": {"address": t.debit.address, "kind": t.debit.kind.value},
        "credit": {"address": t.credit.address, "kind": t.credit.kind.value},
        "created_at": iso_ms(t.created_at_ms),
    }


async def history(
    core: Core,
    key: ApiKey,
    address: str,
    chain_id: str | None,
    from_ms: int | None,
    to_ms: int | None,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    may_read(key, address)
    if chain_id:
        chain_or_422(core, chain_id)
    chain_id = chain_id or None
    count = ledger_store.history_count(address, chain_id, from_ms, to_ms)
    async with core.db.read_long() as conn:  # a count grows with the history
        counted, lowest, highest = (await conn.execute(count)).one()
    total = int(counted)  # PostgreSQL sums to a numeric
    found: list[Transfer] = []
    if total:
        chains = None
        if not chain_id and core.db.dialect == "sqlite":  # see history_page
            async with core.db.read() as conn:
                chains = await ledger_store.address_chains(conn, address)
        # On SQLite a time range's rows are sought by their seq span (history_page).
        ranged = from_ms is not None or to_ms is not None
        span = (lowest, highest) if ranged and core.db.dialect == "sqlite" else None
        page = ledger_store.history_page(
            core.db.dialect, address, chain_id, from_ms, to_ms, limit, offset, chains, span
        )
        async with core.db.read() as conn:
            found = [ledger_store.transfer_from_row(row) for row in await conn.execute(page)]
    return {
        "address": address,
        "chain_id": chain_id,
        "entries": [entry_view(t, address) for t in found],
        "total": total,
        "has_more": offset + len(found) < total,
    }


async def faucet(
    core: Core, address: str, amount_uait: int, chain_id: str | None
) -> dict[str, Any]:
    chain_id = chain_or_422(core, chain_id)
    chain = core.settings.chain(chain_id)
    assert chain is not None
    if not chain.faucet:
        raise FaucetDisabled(f"chain {chain_id} has no faucet")
    transfer_id = f"mint:{uuid.uuid4().hex}"

    async def op(conn: AsyncConnection) -> ledger_store.Balance:
        now = now_ms()
        result = await ledger_store.mint(conn, transfer_id, chain_id, address, amount_uait, now)
        if result != Result.CREATED:
            raise RuntimeError(f"mint answered {result}")
        return await ledger_store.balance(conn, chain_id, address)

    bal = await core.db.write(op)
    return {
        "transfer_id": transfer_id,
        "address": address,
        "chain_id": chain_id,
        "amount": uait_to_ait(amount_uait),
        "balance": uait_to_ait(bal.total_uait),
        "held": uait_to_ait(bal.held_uait),
        "available": uait_to_ait(bal.available_uait),
    }
