"""chain.ledger rules: result codes and their precedence, settlement arithmetic."""

from __future__ import annotations

import pytest

from chain.ledger import (
    ISSUANCE_ADDRESS,
    TREASURY_ADDRESS,
    AccountKind,
    HoldStatus,
    Ledger,
    Result,
    Transfer,
    TransferKind,
    available,
    escrow,
    issuance,
)

C = "ait-devnet"
ALICE = "ait1" + "a" * 40
MINER = "ait1" + "b" * 40


def funded(amount: int = 1_000_000) -> Ledger:
    ledger = Ledger()
    assert ledger.mint("mint:0", C, ALICE, amount) == Result.CREATED
    return ledger


def test_mint_moves_from_issuance() -> None:
    ledger = funded(5)
    assert ledger.balance(available(C, ALICE)) == 5
    assert ledger.balance(issuance(C)) == -5
    assert ledger.minted(C) == 5
    assert issuance(C).address == ISSUANCE_ADDRESS


def test_hold_then_post_with_fee() -> None:
    ledger = funded(1_000_000)
    assert ledger.hold("job_1", C, ALICE, 500_000) == Result.CREATED
    assert ledger.balance(available(C, ALICE)) == 500_000
    assert ledger.balance(escrow(C, ALICE)) == 500_000
    s = ledger.post("job_1", MINER, 300_000, fee_bps=250)
    assert s.result == Result.CREATED
    assert (s.charged_uait, s.fee_uait, s.paid_uait, s.returned_uait) == (
        300_000,
        7_500,
        292_500,
        200_000,
    )
    assert ledger.balance(available(C, MINER)) == 292_500
    assert ledger.balance(available(C, TREASURY_ADDRESS)) == 7_500
    assert ledger.balance(available(C, ALICE)) == 700_000
    assert ledger.balance(escrow(C, ALICE)) == 0
    assert ledger.holds["hold:job_1"].status == HoldStatus.POSTED
    assert {t.transfer_id for t in s.transfers} == {"pay:job_1", "fee:job_1", "refund:job_1"}
    assert ledger.check_invariants() == []


def test_cost_is_capped_at_the_hold() -> None:
    ledger = funded()
    ledger.hold("job_1", C, ALICE, 100)
    s = ledger.post("job_1", MINER, 10**9, fee_bps=0)
    assert (s.charged_uait, s.paid_uait, s.returned_uait) == (100, 100, 0)
    # No refund or fee transfer for zero amounts; the payment is always written.
    assert [t.kind for t in s.transfers] == [TransferKind.PAY]


def test_void_returns_everything_and_only_once() -> None:
    ledger = funded(1_000)
    ledger.hold("job_1", C, ALICE, 600)
    assert ledger.void("job_1").result == Result.CREATED
    assert ledger.balance(available(C, ALICE)) == 1_000
    assert ledger.void("job_1").result == Result.EXISTS
    assert ledger.post("job_1", MINER, 10, 0).result == Result.HOLD_ALREADY_RESOLVED
    assert ledger.balance(available(C, MINER)) == 0


def test_post_replay_with_other_cost_is_refused() -> None:
    ledger = funded()
    ledger.hold("job_1", C, ALICE, 1_000)
    assert ledger.post("job_1", MINER, 500, 0).result == Result.CREATED
    before = dict(ledger.balances)
    assert ledger.post("job_1", MINER, 500, 0).result == Result.EXISTS
    assert ledger.post("job_1", MINER, 600, 0).result == Result.EXISTS_WITH_DIFFERENT_FIELDS
    assert ledger.void("job_1").result == Result.HOLD_ALREADY_RESOLVED
    assert ledger.balances == before


def test_hold_exceeding_available() -> None:
    ledger = funded(10)
    assert ledger.hold("job_1", C, ALICE, 11) == Result.EXCEEDS_AVAILABLE
    assert "hold:job_1" not in ledger.holds and ledger.new_transfers[-1].kind == "mint"
    assert ledger.post("job_1", MINER, 1, 0).result == Result.HOLD_NOT_FOUND


def test_top_up_grows_the_hold_and_its_resolution_releases_all_of_it_once() -> None:
    ledger = funded(1_000)
    assert ledger.top_up("job_1", 1, 5) == Result.HOLD_NOT_FOUND
    assert ledger.hold("job_1", C, ALICE, 0) == Result.CREATED  # estimate 0: no miner known
    assert ledger.top_up("job_1", 1, 1_001) == Result.EXCEEDS_AVAILABLE
    assert ledger.top_up("job_1", 1, 300) == Result.CREATED
    assert ledger.top_up("job_1", 1, 300) == Result.EXISTS  # a replayed claim
    assert ledger.top_up("job_1", 1, 301) == Result.EXISTS_WITH_DIFFERENT_FIELDS
    assert ledger.top_up("job_1", 2, 100) == Result.CREATED  # a later, dearer claim
    assert ledger.holds["hold:job_1"].amount_uait == 400
    assert ledger.grown_holds == {"hold:job_1"}
    assert (ledger.balance(available(C, ALICE)), ledger.balance(escrow(C, ALICE))) == (600, 400)
    assert ledger.check_invariants() == []
    top = ledger.transfers["hold:job_1:2"]
    assert (top.kind, top.job_id, top.hold_id) == (TransferKind.HOLD, "job_1", "hold:job_1")
    s = ledger.post("job_1", MINER, 350, fee_bps=1000)
    assert (s.charged_uait, s.fee_uait, s.paid_uait, s.returned_uait) == (350, 35, 315, 50)
    assert ledger.balance(escrow(C, ALICE)) == 0 and ledger.balance(available(C, ALICE)) == 650
    assert ledger.top_up("job_1", 3, 1) == Result.HOLD_ALREADY_RESOLVED
    assert ledger.top_up("job_1", 2, 100) == Result.EXISTS  # still answered after posting
    assert ledger.check_invariants() == []


def test_top_up_then_void_returns_the_whole_hold() -> None:
    ledger = funded(1_000)
    ledger.hold("job_1", C, ALICE, 100)
    assert ledger.top_up("job_1", 1, 200) == Result.CREATED
    s = ledger.void("job_1")
    assert (s.result, s.returned_uait) == (Result.CREATED, 300)
    assert ledger.balance(available(C, ALICE)) == 1_000 and ledger.check_invariants() == []
    assert ledger.top_up("job_1", 1, -1) == Result.AMOUNT_MUST_NOT_BE_NEGATIVE


def test_precedence_malformed_before_exists_before_balance() -> None:
    ledger = funded(10)
    assert ledger.hold("job_1", C, ALICE, 5) == Result.CREATED
    # Same id, now larger than the balance: `exists_with_different_fields` comes before
    # `exceeds_available`.
    assert ledger.hold("job_1", C, ALICE, 50) == Result.EXISTS_WITH_DIFFERENT_FIELDS
    # A negative amount is malformed before the id is even looked up.
    assert ledger.hold("job_1", C, ALICE, -1) == Result.AMOUNT_MUST_NOT_BE_NEGATIVE
    assert ledger.mint("", C, ALICE, 1) == Result.ID_MUST_NOT_BE_EMPTY
    assert ledger.mint("mint:big", C, ALICE, 2**60) == Result.AMOUNT_TOO_LARGE


@pytest.mark.parametrize(
    ("debit", "credit", "kind", "code"),
    [
        (available(C, ALICE), available(C, ALICE), TransferKind.HOLD, "accounts_must_be_different"),
        (
            available("other", ALICE),
            escrow(C, ALICE),
            TransferKind.HOLD,
            "accounts_must_be_on_transfer_chain",
        ),
        (available(C, ALICE), escrow(C, MINER), TransferKind.HOLD, "accounts_do_not_fit_kind"),
        (issuance(C), escrow(C, ALICE), TransferKind.MINT, "accounts_do_not_fit_kind"),
        (issuance(C), available(C, ALICE), TransferKind.PAY, "accounts_do_not_fit_kind"),
    ],
)
def test_malformed_transfers(debit: object, credit: object, kind: TransferKind, code: str) -> None:
    from chain.ledger import _validate

    t = Transfer("t:1", C, debit, credit, 1, kind)  # type: ignore[arg-type]
    assert _validate(t) == Result(code)


def test_result_ok() -> None:
    assert Result.CREATED.ok and Result.EXISTS.ok and not Result.EXCEEDS_AVAILABLE.ok
    assert AccountKind.ESCROW.value == "escrow"


def test_ledger_module_is_pure() -> None:
    import ast
    import inspect

    import chain.ledger as module

    tree = ast.parse(inspect.getsource(module))
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported <= {"__future__", "collections", "dataclasses", "enum", "protocol", "typing"}
