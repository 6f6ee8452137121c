"""Offline audit of a chain's block log (pure): `verify_chain(blocks, key, live)`.

Every check that fails is reported as a `Failure(height, check, detail)`; the audit never
stops at the first failure and never raises on bad input (a malformed block is a failure
like any other). Check names, in the order they are applied to each block:

    block-format    the block or its header is not the documented shape
    chain-id        a header, entry or receipt names another chain
    height          heights are not 0, 1, 2, ... in order
    prev-hash       prev_hash is not the hash of the previous block
    block-hash      the block's stated hash is not sha256(canonical header)
    signature       the header is not signed by the coordinator's key
    entry-count     entry_count is not the number of entries
    merkle-root     merkle_root is not the root of the entries
    entry-format    an entry is not the documented shape
    duplicate-transfer  a transfer id appears twice in the log
    missing-receipt a pay transfer (kind "pay") carries no receipt
    receipt-signature   a receipt fails chain.receipts.verify_receipt
    receipt-binding a receipt does not match its transfer (job, chain, miner, client), or
                    the job's pay + fee exceed the receipt's cost_uait (units x price)
    escrow          a job's escrow paid out more than was held for it
    negative-balance    an account other than issuance ends below zero (height None)
    balance         a recomputed balance differs from the live one (height None)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chain.blocks import (
    BLOCK_VERSION,
    GENESIS_PREV_HASH,
    HEADER_FIELDS,
    RECEIPT_TRANSFER_KIND,
    block_hash,
    job_id_of_transfer,
    kind_of_transfer,
    verify_header_signature,
)
from chain.merkle import merkle_root
from chain.receipts import verify_receipt
from protocol.canonical import CanonicalError

ISSUANCE_KIND = "issuance"
ESCROW_KIND = "escrow"
CHARGE_KINDS = frozenset({"pay", "fee"})  # what a job pays out of escrow for its work
# Live balances may name escrow the way the wallet API does ("held").
LIVE_KIND_ALIASES = {"held": ESCROW_KIND}


@dataclass(frozen=True)
class Failure:
    height: int | None  # None: a check over the whole chain (balances)
    check: str
    detail: str

    def __str__(self) -> str:
        where = "chain" if self.height is None else f"block {self.height}"
        return f"{where}: {self.check}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    chain_id: str | None
    blocks: int
    entries: int
    failures: tuple[Failure, ...]
    # address -> kind -> micro-AIT, recomputed from the entries
    balances: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    minted_uait: int = 0
    balances_compared: int = 0  # how many live (address, kind) values were checked

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "chain_id": self.chain_id,
            "blocks": self.blocks,
            "entries": self.entries,
            "minted_uait": self.minted_uait,
            "balances_compared": self.balances_compared,
            "failures": [
                {"height": f.height, "check": f.check, "detail": f.detail} for f in self.failures
            ],
            "balances": {a: dict(k) for a, k in self.balances.items()},
        }


@dataclass
class _Audit:
    public_key_hex: str
    chain_id: str | None = None
    failures: list[Failure] = field(default_factory=list)
    balances: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    seen_transfers: set[str] = field(default_factory=set)
    held: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    released: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    charged: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    receipt_cost: dict[str, int] = field(default_factory=dict)
    entries: int = 0

    def fail(self, height: int | None, check: str, detail: str) -> None:
        self.failures.append(Failure(height, check, detail))


def _is_account(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("address"), str)
        and isinstance(value.get("kind"), str)
    )


def _header_problem(block: object) -> str | None:
    if not isinstance(block, Mapping):
        return "block is not a JSON object"
    header = block.get("header")
    if not isinstance(header, Mapping):
        return "block has no header object"
    for name, kind in HEADER_FIELDS.items():
        value = header.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"header field {name} is missing or not a {kind.__name__}"
    if header["version"] != BLOCK_VERSION:
        return f"unknown block version {header['version']}"
    if not isinstance(block.get("entries"), list):
        return "block has no entries list"
    return None


def _check_block(audit: _Audit, index: int, block: Mapping[str, Any], prev: str | None) -> str:
    """Check one well-shaped block; returns its recomputed hash."""
    header: Mapping[str, Any] = block["header"]
    entries: list[Any] = block["entries"]
    height: int = header["height"]
    if audit.chain_id is None:
        audit.chain_id = header["chain_id"]
    elif header["chain_id"] != audit.chain_id:
        audit.fail(height, "chain-id", f"header chain_id {header['chain_id']!r}")
    if height != index:
        audit.fail(height, "height", f"block at position {index} has height {height}")
    expected_prev = GENESIS_PREV_HASH if index == 0 else prev
    if header["prev_hash"] != expected_prev:
        audit.fail(height, "prev-hash", "prev_hash is not the hash of the previous block")
    try:
        own_hash = block_hash(header)
    except CanonicalError as exc:
        audit.fail(height, "block-format", f"header has no canonical form: {exc}")
        return ""
    if "hash" in block and block["hash"] != own_hash:
        audit.fail(height, "block-hash", "stated hash is not sha256 of the canonical header")
    problem = verify_header_signature(header, block.get("signature"), audit.public_key_hex)
    if problem:
        audit.fail(height, "signature", problem)
    if header["entry_count"] != len(entries):
        audit.fail(height, "entry-count", f"{header['entry_count']} stated, {len(entries)} held")
    try:
        root = merkle_root(entries)
    except CanonicalError as exc:
        audit.fail(height, "entry-format", f"an entry has no canonical form: {exc}")
    else:
        if root != header["merkle_root"]:
            audit.fail(height, "merkle-root", "merkle_root is not the root of the entries")
    for position, entry in enumerate(entries):
        _check_entry(audit, height, position, entry)
    return own_hash


def _check_entry(audit: _Audit, height: int, position: int, entry: object) -> None:
    where = f"entry {position}"
    if not (
        isinstance(entry, Mapping)
        and isinstance(entry.get("transfer_id"), str)
        and isinstance(entry.get("amount_uait"), int)
        and not isinstance(entry.get("amount_uait"), bool)
        and entry["amount_uait"] >= 0
        and _is_account(entry.get("debit"))
        and _is_account(entry.get("credit"))
    ):
        audit.fail(height, "entry-format", f"{where} is not a well-formed transfer")
        return
    audit.entries += 1
    transfer_id: str = entry["transfer_id"]
    where = f"{where} ({transfer_id})"
    if entry.get("chain_id") != audit.chain_id:
        audit.fail(height, "chain-id", f"{where} names chain {entry.get('chain_id')!r}")
    if transfer_id in audit.seen_transfers:
        audit.fail(height, "duplicate-transfer", f"{where} appears twice in the log")
        return  # counting it twice would only repeat the failure in the balances
    audit.seen_transfers.add(transfer_id)
    amount: int = entry["amount_uait"]
    debit, credit = entry["debit"], entry["credit"]
    audit.balances[(debit["address"], debit["kind"])] -= amount
    audit.balances[(credit["address"], credit["kind"])] += amount
    job_id = entry.get("job_id")
    if not isinstance(job_id, str):
        job_id = job_id_of_transfer(transfer_id)
    # The stated kind or the id's prefix: relabelling a payment cannot dodge its checks.
    kinds = {entry.get("kind"), kind_of_transfer(transfer_id)}
    is_pay = RECEIPT_TRANSFER_KIND in kinds
    if job_id is not None:
        if credit["kind"] == ESCROW_KIND:
            audit.held[job_id] += amount
        if debit["kind"] == ESCROW_KIND:
            audit.released[job_id] += amount
            if audit.released[job_id] > audit.held[job_id]:
                audit.fail(height, "escrow", f"{where}: job {job_id} paid out more than held")
    if is_pay or "receipt" in entry:
        _check_receipt(audit, height, where, entry, job_id, is_pay)
    if job_id is not None and kinds & CHARGE_KINDS:
        # What a job is charged (miner's pay + protocol fee) never exceeds its receipt.
        audit.charged[job_id] += amount
        cost = audit.receipt_cost.get(job_id)
        if cost is not None and audit.charged[job_id] > cost:
            audit.fail(
                height,
                "receipt-binding",
                f"{where}: job {job_id} charged {audit.charged[job_id]} uAIT, "
                f"its receipt allows {cost}",
            )


def _check_receipt(
    audit: _Audit,
    height: int,
    where: str,
    entry: Mapping[str, Any],
    job_id: str | None,
    is_pay: bool,
) -> None:
    receipt, signature = entry.get("receipt"), entry.get("receipt_signature")
    if receipt is None:
        audit.fail(height, "missing-receipt", f"{where} pays a miner without a receipt")
        return
    problems = verify_receipt(receipt, signature)
    for problem in problems:
        audit.fail(height, "receipt-signature", f"{where}: {problem}")
    if problems or not isinstance(receipt, Mapping):
        return
    mismatches = []
    if receipt["job_id"] != job_id:
        mismatches.append(f"receipt job {receipt['job_id']!r} is not the transfer's {job_id!r}")
    if receipt["chain_id"] != audit.chain_id:
        mismatches.append(f"receipt chain {receipt['chain_id']!r}")
    if is_pay:
        if entry["credit"]["address"] != receipt["miner_address"]:
            mismatches.append("paid address is not the receipt's miner_address")
        if entry["debit"]["address"] != receipt["client_address"]:
            mismatches.append("paying address is not the receipt's client_address")
        if job_id is not None and not mismatches:
            audit.receipt_cost[job_id] = receipt["cost_uait"]
    for mismatch in mismatches:
        audit.fail(height, "receipt-binding", f"{where}: {mismatch}")


def _compare_live(audit: _Audit, live: Mapping[str, Mapping[str, int]]) -> int:
    compared = 0
    for address, kinds in live.items():
        for live_kind, value in kinds.items():
            kind = LIVE_KIND_ALIASES.get(live_kind, live_kind)
            if kind not in ("available", ESCROW_KIND):
                continue  # "balance" is available + held: implied by the two
            compared += 1
            recomputed = audit.balances.get((address, kind), 0)
            if recomputed != value:
                audit.fail(
                    None,
                    "balance",
                    f"{address} {kind}: log gives {recomputed} uAIT, live says {value}",
                )
    return compared


def verify_chain(
    blocks: Sequence[Any],
    coordinator_public_key_hex: str,
    live_balances: Mapping[str, Mapping[str, int]] | None = None,
    *,
    chain_id: str | None = None,
) -> VerifyReport:
    """Audit a chain's blocks, in order from height 0, against the coordinator's key.

    ``live_balances`` maps address -> {"available": uAIT, "held" (or "escrow"): uAIT},
    e.g. from GET /v1/wallets/{address}/balance converted to micro-AIT; every value given
    must equal the balance recomputed from the entries. ``chain_id``, when given, is the
    chain every block must belong to (else the first block's chain is taken).
    """
    audit = _Audit(public_key_hex=coordinator_public_key_hex, chain_id=chain_id)
    prev: str | None = None
    for index, block in enumerate(blocks):
        problem = _header_problem(block)
        if problem:
            # Its stated height cannot be trusted: name it by its position in the log.
            audit.fail(index, "block-format", problem)
            prev = None
            continue
        prev = _check_block(audit, index, block, prev)
    for (address, kind), value in sorted(audit.balances.items()):
        if kind != ISSUANCE_KIND and value < 0:
            audit.fail(None, "negative-balance", f"{address} {kind} ends at {value} uAIT")
    compared = _compare_live(audit, live_balances) if live_balances is not None else 0
    balances: dict[str, dict[str, int]] = {}
    for (address, kind), value in sorted(audit.balances.items()):
        balances.setdefault(address, {})[kind] = value
    minted = -sum(v for (_, k), v in audit.balances.items() if k == ISSUANCE_KIND)
    return VerifyReport(
        chain_id=audit.chain_id,
        blocks=len(blocks),
        entries=audit.entries,
        failures=tuple(audit.failures),
        balances=balances,
        minted_uait=minted,
        balances_compared=compared,
    )
