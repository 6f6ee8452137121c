"""verify_chain: an honest chain passes; each kind of tampering is named with its block."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.blocks import GENESIS_PREV_HASH, seal_block, transfer_entry
from chain.ledger import ISSUANCE_ADDRESS, TREASURY_ADDRESS
from chain.receipts import build_receipt, sign_receipt
from chain.verify import VerifyReport, verify_chain
from protocol.keys import PrivateKey, address_of, generate_private_key, public_key_hex

CHAIN = "ait-devnet"
ISSUANCE = ISSUANCE_ADDRESS
TREASURY = TREASURY_ADDRESS
T0 = 1_790_000_000_000

COORDINATOR = generate_private_key()
MINER = generate_private_key()
CLIENT = generate_private_key()
MINER_ADDRESS = address_of(generate_private_key())  # the miner key's bound wallet
CLIENT_ADDRESS = address_of(CLIENT)
AVAIL, ESCROW = (CLIENT_ADDRESS, "available"), (CLIENT_ADDRESS, "escrow")


def _transfer(
    transfer_id: str,
    debit: tuple[str, str],
    credit: tuple[str, str],
    amount: int,
    **extra: Any,
) -> dict[str, Any]:
    return transfer_entry(
        transfer_id=transfer_id,
        chain_id=CHAIN,
        debit_address=debit[0],
        debit_kind=debit[1],
        credit_address=credit[0],
        credit_kind=credit[1],
        amount_uait=amount,
        created_at_ms=T0,
        **extra,
    )


def _signed_receipt(job_id: str, units: int, price: int, miner: PrivateKey = MINER) -> Any:
    receipt = build_receipt(
        job_id=job_id,
        chain_id=CHAIN,
        miner_address=MINER_ADDRESS,
        client_address=CLIENT_ADDRESS,
        model="gpt2",
        input_sha256="1" * 64,
        output_sha256="2" * 64,
        units=units,
        unit="token",
        price_uait_per_unit=price,
        attempt=1,
        started_at="2026-09-21T14:13:20.000Z",
        completed_at="2026-09-21T14:13:21.000Z",
        public_key=public_key_hex(miner),
    )
    return receipt, sign_receipt(miner, receipt)


def _job(job_id: str, hold: int, units: int, price: int, fee: int) -> list[dict[str, Any]]:
    """A completed job's transfers as chain.ledger writes them: hold; pay (with receipt)
    and fee, which together are the metered cost; refund of the rest."""
    receipt, signature = _signed_receipt(job_id, units, price)
    cost = units * price
    out = [
        _transfer(
            f"hold:{job_id}", (CLIENT_ADDRESS, "available"), (CLIENT_ADDRESS, "escrow"), hold
        ),
        _transfer(
            f"pay:{job_id}",
            (CLIENT_ADDRESS, "escrow"),
            (MINER_ADDRESS, "available"),
            cost - fee,
            receipt=receipt,
            receipt_signature=signature,
        ),
    ]
    if fee:
        out.append(
            _transfer(f"fee:{job_id}", (CLIENT_ADDRESS, "escrow"), (TREASURY, "available"), fee)
        )
    if hold - cost:
        out.append(
            _transfer(
                f"refund:{job_id}",
                (CLIENT_ADDRESS, "escrow"),
                (CLIENT_ADDRESS, "available"),
                hold - cost,
            )
        )
    return out


def _seal_all(
    groups: list[list[dict[str, Any]]], key: PrivateKey = COORDINATOR
) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    prev = GENESIS_PREV_HASH
    for height, entries in enumerate(groups):
        block = seal_block(
            chain_id=CHAIN,
            height=height,
            prev_hash=prev,
            entries=entries,
            created_at_ms=T0 + 1000 * height,
            private_key=key,
        )
        blocks.append(block)
        prev = block["hash"]
    return blocks


def _honest_groups() -> list[list[dict[str, Any]]]:
    mint = _transfer("mint:1", (ISSUANCE, "issuance"), (CLIENT_ADDRESS, "available"), 10_000_000)
    pending_hold = _transfer(
        "hold:job_3", (CLIENT_ADDRESS, "available"), (CLIENT_ADDRESS, "escrow"), 400_000
    )
    return [
        [mint],
        _job("job_1", hold=1_000_000, units=50, price=10_000, fee=5_000),
        [*_job("job_2", hold=300_000, units=30, price=10_000, fee=0), pending_hold],
    ]


PUB = public_key_hex(COORDINATOR)
LIVE = {
    CLIENT_ADDRESS: {"available": 10_000_000 - 500_000 - 300_000 - 400_000, "held": 400_000},
    MINER_ADDRESS: {"available": 795_000, "held": 0},
    TREASURY: {"available": 5_000, "held": 0},
}


def _checks(report: VerifyReport) -> set[tuple[int | None, str]]:
    return {(f.height, f.check) for f in report.failures}


def _reseal(blocks: list[dict[str, Any]], key: PrivateKey = COORDINATOR) -> list[dict[str, Any]]:
    """What a dishonest coordinator would do: re-seal edited entries with its real key."""
    return _seal_all([b["entries"] for b in blocks], key)


def test_honest_chain_verifies_and_recomputes_balances() -> None:
    blocks = _seal_all(_honest_groups())
    report = verify_chain(blocks, PUB, LIVE)
    assert report.ok, [str(f) for f in report.failures]
    assert report.chain_id == CHAIN
    assert report.blocks == 3
    assert report.entries == 1 + 4 + 3
    assert report.minted_uait == 10_000_000
    assert report.balances_compared == 6
    assert report.balances[CLIENT_ADDRESS] == {"available": 8_800_000, "escrow": 400_000}
    assert report.balances[MINER_ADDRESS] == {"available": 795_000}
    assert sum(v for kinds in report.balances.values() for v in kinds.values()) == 0
    document = report.to_dict()
    assert document["ok"] is True and document["failures"] == []
    # The live values may also name escrow by its ledger kind.
    assert verify_chain(blocks, PUB, {CLIENT_ADDRESS: {"escrow": 400_000}}).ok


def test_empty_chain_is_trivially_valid() -> None:
    report = verify_chain([], PUB)
    assert report.ok and report.blocks == 0 and report.minted_uait == 0


def test_live_balance_mismatch_is_reported() -> None:
    blocks = _seal_all(_honest_groups())
    live = {**LIVE, MINER_ADDRESS: {"available": 795_001, "held": 0}}
    report = verify_chain(blocks, PUB, live)
    assert _checks(report) == {(None, "balance")}
    assert MINER_ADDRESS in str(report.failures[0])


def test_edited_amount_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    blocks[1]["entries"][1]["amount_uait"] += 1  # pay:job_1
    report = verify_chain(blocks, PUB, LIVE)
    assert (1, "merkle-root") in _checks(report)
    assert (1, "receipt-binding") in _checks(report)  # pays more than units x price
    assert all(f.height in (1, None) for f in report.failures)


def test_edited_amount_resealed_by_coordinator_is_caught_by_balances() -> None:
    blocks = _seal_all(_honest_groups())
    blocks[0]["entries"][0]["amount_uait"] += 1_000_000  # mint more than was minted
    report = verify_chain(_reseal(blocks), PUB, LIVE)
    assert _checks(report) == {(None, "balance")}
    # Without live balances the forged chain is internally consistent.
    assert verify_chain(_reseal(blocks), PUB).ok


def test_removed_entry_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    del blocks[2]["entries"][2]  # the pending hold of job_3
    report = verify_chain(blocks, PUB, LIVE)
    assert {(2, "entry-count"), (2, "merkle-root"), (None, "balance")} == _checks(report)
    resealed = verify_chain(_reseal(blocks), PUB, LIVE)
    assert _checks(resealed) == {(None, "balance")}


def test_reordered_blocks_are_named() -> None:
    blocks = _seal_all(_honest_groups())
    swapped = [blocks[0], blocks[2], blocks[1]]
    report = verify_chain(swapped, PUB, LIVE)
    checks = _checks(report)
    assert (2, "height") in checks  # block 2 found at position 1
    assert (2, "prev-hash") in checks
    assert (1, "height") in checks
    assert (1, "prev-hash") in checks
    assert not any(f.check == "signature" for f in report.failures)
    # A dropped block breaks the link and the balances too.
    dropped = verify_chain([blocks[0], blocks[2]], PUB, LIVE)
    assert {(2, "height"), (2, "prev-hash")} <= _checks(dropped)


def test_reordered_entries_inside_a_block_are_named() -> None:
    blocks = _seal_all(_honest_groups())
    entries = blocks[1]["entries"]
    entries[0], entries[1] = entries[1], entries[0]
    report = verify_chain(blocks, PUB, LIVE)
    assert (1, "merkle-root") in _checks(report)


def test_forged_receipt_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    pay = blocks[2]["entries"][1]
    assert pay["transfer_id"] == "pay:job_2"
    pay["receipt"]["units"] = 40
    pay["receipt"]["cost_uait"] = 400_000
    # Even re-sealed with the coordinator's real key, the miner's signature gives it away.
    report = verify_chain(_reseal(blocks), PUB)
    assert {f.check for f in report.failures} == {"receipt-signature"}
    assert {f.height for f in report.failures} == {2}
    assert "pay:job_2" in report.failures[0].detail


def test_receipt_signed_by_another_miner_for_another_job_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    receipt, signature = _signed_receipt("job_other", 30, 10_000, miner=generate_private_key())
    pay = blocks[2]["entries"][1]
    pay["receipt"], pay["receipt_signature"] = receipt, signature
    report = verify_chain(_reseal(blocks), PUB, LIVE)
    assert _checks(report) == {(2, "receipt-binding")}
    assert "job_other" in report.failures[0].detail


def test_pay_without_receipt_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    pay = blocks[1]["entries"][1]
    del pay["receipt"], pay["receipt_signature"]
    report = verify_chain(_reseal(blocks), PUB, LIVE)
    assert _checks(report) == {(1, "missing-receipt")}


def test_block_resigned_with_another_key_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    forged = _seal_all(_honest_groups(), key=generate_private_key())
    # Replace block 1 by one signed by another key, keeping the links intact.
    mixed = [blocks[0], forged[1], blocks[2]]
    mixed[1]["header"]["prev_hash"] = blocks[0]["hash"]
    report = verify_chain(mixed, PUB, LIVE)
    assert (1, "signature") in _checks(report)
    assert "another key" in next(f.detail for f in report.failures if f.check == "signature")
    # A whole chain signed by another key fails on every block.
    everything = verify_chain(forged, PUB, LIVE)
    assert {(h, "signature") for h in range(3)} == _checks(everything)


def test_forged_signature_with_right_public_key_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    other = _seal_all(_honest_groups(), key=generate_private_key())
    blocks[0]["signature"]["sig"] = other[0]["signature"]["sig"]
    report = verify_chain(blocks, PUB)
    assert _checks(report) == {(0, "signature")}


def test_edited_header_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    blocks[1]["header"]["created_at"] = "2030-01-01T00:00:00.000Z"
    report = verify_chain(blocks, PUB, LIVE)
    assert {(1, "block-hash"), (1, "signature"), (2, "prev-hash")} == _checks(report)


def test_duplicate_transfer_is_named() -> None:
    groups = _honest_groups()
    groups.append([copy.deepcopy(groups[0][0])])  # the mint, again
    report = verify_chain(_seal_all(groups), PUB)
    assert _checks(report) == {(3, "duplicate-transfer")}


def test_escrow_overdraw_is_named() -> None:
    groups = _honest_groups()
    groups.append(
        [_transfer("refund:job_2", (CLIENT_ADDRESS, "escrow"), (CLIENT_ADDRESS, "available"), 5)]
    )
    report = verify_chain(_seal_all(groups), PUB)
    assert (3, "escrow") in _checks(report)


def test_wrong_chain_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    report = verify_chain(blocks, PUB, chain_id="ait-testnet")
    assert {(h, "chain-id") for h in range(3)} <= _checks(report)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "block",
        {"header": []},
        {"header": {"height": 0}, "entries": []},
        {"header": {"height": "0"}},
    ],
)
def test_malformed_blocks_are_failures_not_errors(bad: Any) -> None:
    blocks: list[Any] = _seal_all(_honest_groups())
    blocks[1] = bad
    report = verify_chain(blocks, PUB, LIVE)
    assert (1, "block-format") in _checks(report)
    assert not report.ok


def test_malformed_entries_are_failures_not_errors() -> None:
    blocks = _seal_all(_honest_groups())
    blocks[0]["entries"].append({"transfer_id": "x", "amount_uait": "1"})
    blocks[0]["entries"].append({"amount_uait": 1.5})
    report = verify_chain(blocks, PUB)
    assert (0, "entry-format") in _checks(report)


def test_fee_that_overcharges_the_receipt_is_named() -> None:
    blocks = _seal_all(_honest_groups())
    fee, refund = blocks[1]["entries"][2], blocks[1]["entries"][3]
    assert (fee["transfer_id"], refund["transfer_id"]) == ("fee:job_1", "refund:job_1")
    fee["amount_uait"] += 1_000  # the treasury takes more; escrow still balances
    refund["amount_uait"] -= 1_000
    report = verify_chain(_reseal(blocks), PUB)
    assert _checks(report) == {(1, "receipt-binding")}
    assert "charged 501000" in report.failures[0].detail


def test_relabelled_payment_still_needs_its_receipt() -> None:
    blocks = _seal_all(_honest_groups())
    pay = blocks[1]["entries"][1]
    pay["kind"] = "refund"
    del pay["receipt"], pay["receipt_signature"]
    report = verify_chain(_reseal(blocks), PUB)
    assert _checks(report) == {(1, "missing-receipt")}


def _leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every string and integer inside a JSON value."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaf_paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaf_paths(v, (*prefix, i))]
    return [prefix]


HONEST = _seal_all(_honest_groups())
HONEST_PATHS = [(h, p) for h, block in enumerate(HONEST) for p in _leaf_paths(block)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(HONEST_PATHS), st.integers(1, 255))
def test_any_changed_value_anywhere_is_detected_at_its_block(
    where: tuple[int, tuple[Any, ...]], delta: int
) -> None:
    height, path = where
    blocks = copy.deepcopy(HONEST)
    parent: Any = blocks[height]
    for step in path[:-1]:
        parent = parent[step]
    value = parent[path[-1]]
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        parent[path[-1]] = value + delta
    else:
        # Flip one character, keeping hex strings hex (a signature stays well-formed).
        pos = delta % len(value) if value else 0
        old = value[pos] if value else ""
        new = "0" if old != "0" else "1"
        parent[path[-1]] = value[:pos] + new + value[pos + 1 :]
    report = verify_chain(blocks, PUB, LIVE)
    assert not report.ok, (height, path)
    # The first failure names the tampered block: by its height, or by the height it now
    # claims when that is what was edited.
    claimed = blocks[height]["header"]["height"]
    assert report.failures[0].height in (height, claimed), [str(f) for f in report.failures]
