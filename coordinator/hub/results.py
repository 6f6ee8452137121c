"""Checks on a miner's ``result`` before anything is settled (pure).

The signature must verify over the receipt's canonical bytes, the receipt must be signed
by this connection's key for this very job, and the output must hash to the receipt's
``output_sha256``. The lifecycle service then binds the receipt to the job as leased
(chain, client, model, input hash, payee, price, attempt) inside the settling commit.
"""

from __future__ import annotations

from chain.receipts import verify_receipt
from coordinator.hub.registry import MinerConn
from protocol.canonical import sha256_hex
from protocol.limits import MAX_OUTPUT_BYTES
from protocol.messages import Result

Problem = tuple[str, str]  # (reject code, reason)


def check_result(
    msg: Result, conn: MinerConn, signature_valid: bool | None = None
) -> Problem | None:
    """None when the result may go on to settlement; else why it is rejected.
    ``signature_valid``: the signature's verdict where it was verified ahead
    (hub/verifier.py); None verifies it here."""
    if not msg.signature or not msg.signature.get("sig"):
        return ("bad-signature", "the result carries no signature")
    problems = verify_receipt(msg.receipt, msg.signature, signature_valid)
    if problems:
        return ("bad-signature", "; ".join(problems))
    receipt = msg.receipt
    if receipt.get("job_id") != msg.job_id:
        return ("not-bound", f"receipt is for job {receipt.get('job_id')}, not {msg.job_id}")
    if receipt.get("public_key") != conn.public_key or receipt.get("miner_id") != conn.miner_id:
        return ("not-bound", f"receipt is signed by another miner's key, not {conn.miner_id}")
    if receipt.get("miner_address") != conn.address:
        return ("not-bound", f"receipt pays {receipt.get('miner_address')}, not {conn.address}")
    offer = conn.advert.offer(str(receipt.get("model")))
    if offer is not None and receipt.get("unit") != offer.unit:
        return ("not-bound", f"receipt unit {receipt.get('unit')} is not {offer.unit}")
    output = msg.output_bytes()
    if len(output) > MAX_OUTPUT_BYTES:
        return ("bad-output", f"output is larger than {MAX_OUTPUT_BYTES} bytes")
    if sha256_hex(output) != receipt.get("output_sha256"):
        return ("bad-output", "output bytes do not hash to the receipt's output_sha256")
    return None
