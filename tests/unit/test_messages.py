"""protocol.messages: every message round-trips; malformed frames fail with a clear error."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest

from chain.receipts import build_receipt, sign_receipt
from protocol.canonical import sha256_hex
from protocol.keys import generate_private_key, public_key_hex, sign_hex, verify_hex
from protocol.limits import MAX_MESSAGE_BYTES
from protocol.messages import (
    MESSAGE_TYPES,
    Ack,
    Advert,
    Assign,
    Cancel,
    Challenge,
    Error,
    Failed,
    GpuInfo,
    Heartbeat,
    Hello,
    Message,
    ModelOffer,
    Progress,
    ProtocolError,
    Reject,
    Release,
    Result,
    Resume,
    Welcome,
    auth_payload,
    decode,
    encode,
    gpu_type_matches,
    normalise_gpu_type,
)

ADDR = "ait1" + "ab" * 20
ADVERT = Advert(
    gpus=(GpuInfo("a100-80gb", 80, 2, 10), GpuInfo("cpu", 0, 1)),
    models=(ModelOffer("gpt2", "text-generation", "token", 20),),
    max_concurrency=2,
    software_version="ait-miner/0.1.0",
)


def _result() -> Result:
    key = generate_private_key()
    receipt = build_receipt(
        job_id="job_1",
        chain_id="ait-devnet",
        miner_address=ADDR,
        client_address=ADDR,
        model="gpt2",
        input_sha256=sha256_hex(b"in"),
        output_sha256=sha256_hex(b"out"),
        units=3,
        unit="byte",
        price_uait_per_unit=1,
        attempt=1,
        started_at="2026-01-01T00:00:00.000Z",
        completed_at="2026-01-01T00:00:01.000Z",
        public_key=public_key_hex(key),
    )
    return Result(
        "job_1",
        receipt,
        sign_receipt(key, receipt),
        base64.b64encode(b"out").decode(),
        "application/json",
        "output.json",
        {"bytes": 3},
    )


SAMPLES: list[Message] = [
    Challenge("n" * 64),
    Hello("ab" * 32, "cd" * 64, ADVERT),
    Welcome("miner_0123456789ab", ADDR, 30, 5),
    Resume(("job_1",), ("job_2",)),
    Assign(
        job_id="job_1",
        model="gpt2",
        input_kind="json",
        input_sha256=sha256_hex(b'"hi"'),
        chain_id="ait-devnet",
        client_address=ADDR,
        attempt=1,
        price_uait_per_unit=20,
        unit="token",
        lease_expires="2026-01-01T00:00:30.000Z",
        timeout_s=3600,
        params={"max_new_tokens": 5},
        input_json='"hi"',
    ),
    Assign(
        job_id="job_2",
        model="m",
        input_kind="file",
        input_sha256=sha256_hex(b"\x00\x01"),
        chain_id="ait-devnet",
        client_address=ADDR,
        attempt=2,
        price_uait_per_unit=0,
        unit="byte",
        lease_expires="2026-01-01T00:00:30.000Z",
        timeout_s=60,
        input_b64=base64.b64encode(b"\x00\x01").decode(),
        input_filename="data.bin",
    ),
    Heartbeat(("job_1",), 42),
    Progress("job_1", 45, "epoch 2/4"),
    _result(),
    Failed("job_1", "bad input", False),
    Release(("job_1",), "shutdown", True),
    Cancel("job_1", "cancelled by the client"),
    Ack("job_1"),
    Reject("job_1", "bad-signature", "signature does not verify"),
    Error("unauthorized", "bad key"),
]


def test_every_message_type_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(msg: Message) -> None:
    text = encode(msg)
    data = json.loads(text)
    assert data["v"] == 1 and data["type"] == msg.TYPE
    assert decode(text) == msg
    assert decode(text.encode()) == msg


def test_assign_input_bytes_hash_to_input_sha256() -> None:
    for msg in SAMPLES:
        if isinstance(msg, Assign):
            assert sha256_hex(msg.input_bytes()) == msg.input_sha256


def _frame(**fields: Any) -> str:
    return json.dumps({"v": 1, **fields})


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        (json.dumps({"v": 2, "type": "ack", "job_id": "j"}), "version"),
        (json.dumps({"type": "ack", "job_id": "j"}), "version"),
        (_frame(type="nope"), "unknown message type"),
        (_frame(type="ack"), "'job_id' is required"),
        (_frame(type="ack", job_id="j", extra=1), "unknown field 'extra'"),
        (_frame(type="ack", job_id=5), "'job_id' must be a string"),
        (_frame(type="ack", job_id="has space"), "'job_id' is malformed"),
        # `$` alone would also match before a final newline: patterns must span the value.
        (_frame(type="ack", job_id="job_1\n"), "'job_id' is malformed"),
        (_frame(type="progress", job_id="j", percent=101), "between 0 and 100"),
        (_frame(type="progress", job_id="j", percent=True), "must be an integer"),
        (_frame(type="progress", job_id="j", percent=1.5), "must be an integer"),
        (_frame(type="heartbeat", running="job_1"), "must be an array"),
        (_frame(type="heartbeat", running=["j"] * 65), "more than 64"),
        (_frame(type="reject", job_id="j", code="whatever", reason="r"), "must be one of"),
        (_frame(type="failed", job_id="j", error="e", retryable="yes"), "true or false"),
        (
            _frame(
                type="result",
                job_id="j",
                receipt={},
                output_b64="!!",
                content_type="a",
                filename="f",
            ),
            "not valid base64",
        ),
        (
            _frame(
                type="result",
                job_id="j",
                receipt={},
                output_b64="",
                content_type="a",
                filename="../etc/passwd",
            ),
            "'filename' is malformed",
        ),
        (_frame(type="hello", public_key="zz", signature="00", advert={}), "'public_key'"),
    ],
)
def test_bad_frames_name_the_problem(frame: str, needle: str) -> None:
    with pytest.raises(ProtocolError, match=needle):
        decode(frame)


def test_assign_needs_exactly_one_input_form() -> None:
    good = json.loads(encode(SAMPLES[4]))
    both = {**good, "input_b64": "AA=="}
    with pytest.raises(ProtocolError, match="exactly"):
        decode(json.dumps(both))
    neither = {k: v for k, v in good.items() if k != "input_json"}
    with pytest.raises(ProtocolError, match="exactly"):
        decode(json.dumps(neither))


def test_advert_rules() -> None:
    hello = json.loads(encode(SAMPLES[1]))
    no_gpus = {**hello, "advert": {**hello["advert"], "gpus": []}}
    with pytest.raises(ProtocolError, match="at least one"):
        decode(json.dumps(no_gpus))
    twice = {**hello, "advert": {**hello["advert"], "models": hello["advert"]["models"] * 2}}
    with pytest.raises(ProtocolError, match="twice"):
        decode(json.dumps(twice))
    bad_unit = json.loads(json.dumps(hello))
    bad_unit["advert"]["models"][0]["unit"] = "hour"
    with pytest.raises(ProtocolError, match=r"hello\.advert\.models\[0\]: field 'unit'"):
        decode(json.dumps(bad_unit))
    assert ADVERT.offer("gpt2") is not None and ADVERT.offer("nope") is None


def test_size_limit() -> None:
    huge = "x" * (MAX_MESSAGE_BYTES + 1)
    with pytest.raises(ProtocolError, match="larger than"):
        decode(huge)


def test_encode_refuses_an_invalid_message() -> None:
    with pytest.raises(ProtocolError):
        encode(Progress("job_1", 250))


def test_encode_without_validation_still_refuses_what_is_not_a_frame() -> None:
    # For a message validated by an earlier encode (a miner's result): no parse back, so
    # a field rule is not checked again, but the text is still JSON within the size bound.
    assert encode(Progress("job_1", 250), validate=False) == (
        '{"v":1,"type":"progress","job_id":"job_1","percent":250}'
    )
    with pytest.raises(ProtocolError, match="no JSON form"):
        encode(Progress("job_1", 5, "\ud800"), validate=False)
    with pytest.raises(ProtocolError, match="larger than"):
        encode(Progress("job_1", 5, "x" * MAX_MESSAGE_BYTES), validate=False)


def test_auth_payload_signature() -> None:
    key = generate_private_key()
    sig = sign_hex(key, auth_payload("abc"))
    assert auth_payload("abc") == b'{"nonce":"abc","purpose":"ait-miner-auth"}'
    assert verify_hex(public_key_hex(key), sig, auth_payload("abc"))
    assert not verify_hex(public_key_hex(key), sig, auth_payload("abd"))


@pytest.mark.parametrize(
    ("name", "vram", "expected"),
    [
        ("Tesla V100-SXM2-16GB", 16, "v100"),
        ("NVIDIA A100-SXM4-80GB", 80, "a100-80gb"),
        ("NVIDIA A100-PCIE-40GB", 40, "a100-40gb"),
        ("NVIDIA A100 PCIe", 80, "a100-80gb"),
        ("NVIDIA A100", None, "a100"),
        ("A100 80GB", None, "a100-80gb"),
        ("NVIDIA GeForce RTX 4090", 24, "rtx-4090"),
        ("NVIDIA GeForce RTX 3080 Ti", 12, "rtx-3080-ti"),
        ("NVIDIA RTX A6000", 48, "rtx-a6000"),
        ("NVIDIA H100 80GB HBM3", 80, "h100"),
        ("Tesla T4", 15, "t4"),
        ("NVIDIA L40S", 45, "l40s"),
        ("cpu", None, "cpu"),
        ("V100", None, "v100"),
        ("a100-80gb", None, "a100-80gb"),
    ],
)
def test_normalise_gpu_type(name: str, vram: int | None, expected: str) -> None:
    assert normalise_gpu_type(name, vram) == expected


def test_gpu_family_matching() -> None:
    assert gpu_type_matches("a100-80gb", "a100")
    assert gpu_type_matches("a100-80gb", "a100-80gb")
    assert not gpu_type_matches("a100-40gb", "a100-80gb")
    assert not gpu_type_matches("a1000", "a100")


def test_protocol_imports_no_io_library() -> None:
    code = (
        "import sys, protocol.messages, protocol.limits;"
        "bad = {'aiohttp','websockets','sqlalchemy','torch','asyncio'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_example_in_docs_protocol_decodes() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    from protocol.frames import decode_frame

    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    decoded = [m for block in blocks for m in decode_frame(block, batches=True)]
    assert not [m for m in decoded if isinstance(m, ProtocolError)]
    assert {m.TYPE for m in decoded if not isinstance(m, ProtocolError)} == {
        m.TYPE for m in MESSAGE_TYPES
    }
    assert any(block.lstrip().startswith("[") for block in blocks)  # the batch example
