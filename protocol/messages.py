"""Versioned (v1) websocket messages between miners and the coordinator.

Every frame is one JSON text object ``{"v": 1, "type": "<kind>", ...fields}``. ``decode``
validates strictly (unknown type, unknown or missing field, wrong type, out of bounds:
``ProtocolError`` with a sentence naming the field) so the hub and the daemon only ever
see well-formed frozen dataclasses. Pure: no I/O, no network library. See docs/protocol.md.

Direction: C = coordinator -> miner, M = miner -> coordinator.

    C challenge  M hello  C welcome  M resume      (handshake; resume after every welcome)
    C assign     M progress  M heartbeat  M result  M failed  M release
    C ack        C reject    C cancel     C error
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeAlias

import orjson

from protocol.adverts import (
    UNITS,
    Advert,
    GpuInfo,
    ModelOffer,
    gpu_type_matches,
    normalise_gpu_type,
)
from protocol.canonical import canonical_bytes
from protocol.frozen import direct_init
from protocol.limits import (
    MAX_INPUT_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_PARAMS_BYTES,
    MAX_SUMMARY_BYTES,
    MAX_TEXT_CHARS,
    MAX_TIMEOUT_S,
    PROTOCOL_VERSION,
)
from protocol.wirefields import (
    ADDRESS_RE,
    HEX64_RE,
    HEX128_RE,
    FieldReader,
    ProtocolError,
)

__all__ = [
    "MESSAGE_TYPES",
    "UNITS",
    "Ack",
    "Advert",
    "Assign",
    "Cancel",
    "Challenge",
    "Error",
    "Failed",
    "GpuInfo",
    "Heartbeat",
    "Hello",
    "Message",
    "ModelOffer",
    "Progress",
    "ProtocolError",
    "Reject",
    "Release",
    "Result",
    "Resume",
    "Welcome",
    "auth_payload",
    "decode",
    "decode_object",
    "encode",
    "gpu_type_matches",
    "load_json",
    "normalise_gpu_type",
]

AUTH_PURPOSE = "ait-miner-auth"
INPUT_KINDS = ("json", "file")
REJECT_CODES = (
    "bad-signature",  # the receipt signature does not verify
    "not-bound",  # the receipt names another job, miner, input, chain, client or model
    "bad-output",  # output bytes do not hash to the receipt's output_sha256, or too large
    "lease-lost",  # the job is no longer leased to this miner (expired, cancelled, ended)
    "duplicate",  # the job was already completed; nothing is paid again
)


def auth_payload(nonce: str) -> bytes:
    """The canonical bytes a miner signs to prove it holds its key for this connection."""
    return canonical_bytes({"purpose": AUTH_PURPOSE, "nonce": nonce})


# --- messages --------------------------------------------------------------------------


@direct_init
@dataclass(frozen=True)
class Challenge:
    """C: first frame on a new connection; the miner signs ``auth_payload(nonce)``."""

    TYPE: ClassVar[str] = "challenge"
    nonce: str


@direct_init
@dataclass(frozen=True)
class Hello:
    """M: proves the key (signature over the nonce) and advertises what it sells."""

    TYPE: ClassVar[str] = "hello"
    public_key: str
    signature: str
    advert: Advert


@direct_init
@dataclass(frozen=True)
class Welcome:
    """C: the miner is registered; renew leases at least every ``heartbeat_s``."""

    TYPE: ClassVar[str] = "welcome"
    miner_id: str
    address: str  # where this miner is paid (its API key's address)
    lease_s: float
    heartbeat_s: float


@direct_init
@dataclass(frozen=True)
class Resume:
    """M: right after welcome: jobs still running here and results not yet acknowledged."""

    TYPE: ClassVar[str] = "resume"
    running: tuple[str, ...] = ()
    pending_results: tuple[str, ...] = ()


@direct_init
@dataclass(frozen=True)
class Assign:
    """C: a job leased to this miner until ``lease_expires`` unless renewed."""

    TYPE: ClassVar[str] = "assign"
    job_id: str
    model: str
    input_kind: str  # json | file
    input_sha256: str
    chain_id: str
    client_address: str
    attempt: int
    price_uait_per_unit: int
    unit: str
    lease_expires: str  # ISO 8601 UTC, informational: renewals move it
    timeout_s: int
    params: Mapping[str, Any] = field(default_factory=dict)
    input_json: str | None = None  # the exact JSON text when input_kind == "json"
    input_b64: str | None = None  # the file bytes when input_kind == "file"
    input_filename: str | None = None

    def input_bytes(self) -> bytes:
        """The bytes ``input_sha256`` is over: the JSON text (UTF-8) or the file."""
        if self.input_b64 is not None:
            return base64.b64decode(self.input_b64)
        return (self.input_json or "").encode("utf-8")


@direct_init
@dataclass(frozen=True)
class Heartbeat:
    """M: renews the lease of every job in ``running``."""

    TYPE: ClassVar[str] = "heartbeat"
    running: tuple[str, ...] = ()
    utilisation: int = 0


@direct_init
@dataclass(frozen=True)
class Progress:
    """M: progress of one job (also renews its lease)."""

    TYPE: ClassVar[str] = "progress"
    job_id: str
    percent: int
    message: str | None = None


@direct_init
@dataclass(frozen=True)
class Result:
    """M: the finished job: signed receipt plus the output bytes it hashes."""

    TYPE: ClassVar[str] = "result"
    job_id: str
    receipt: Mapping[str, Any]
    signature: Mapping[str, Any]
    output_b64: str
    content_type: str
    filename: str
    summary: Mapping[str, Any] = field(default_factory=dict)

    def output_bytes(self) -> bytes:
        return base64.b64decode(self.output_b64)


@direct_init
@dataclass(frozen=True)
class Failed:
    """M: the job could not run; ``retryable`` false means the input itself is at fault."""

    TYPE: ClassVar[str] = "failed"
    job_id: str
    error: str
    retryable: bool = False


@direct_init
@dataclass(frozen=True)
class Release:
    """M: gives leases back (shutdown); with ``draining`` the miner takes no new jobs."""

    TYPE: ClassVar[str] = "release"
    job_ids: tuple[str, ...] = ()
    reason: str = "shutdown"
    draining: bool = True


@direct_init
@dataclass(frozen=True)
class Cancel:
    """C: stop this job now (cancelled by the client, timed out, or lease lost)."""

    TYPE: ClassVar[str] = "cancel"
    job_id: str
    reason: str


@direct_init
@dataclass(frozen=True)
class Ack:
    """C: the result was accepted and settled; the miner may forget it."""

    TYPE: ClassVar[str] = "ack"
    job_id: str


@direct_init
@dataclass(frozen=True)
class Reject:
    """C: the result was not accepted and nothing is paid for it."""

    TYPE: ClassVar[str] = "reject"
    job_id: str
    code: str
    reason: str


@direct_init
@dataclass(frozen=True)
class Error:
    """C: a connection-level problem (auth, malformed frame); the socket closes after it."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


Message: TypeAlias = (
    Challenge
    | Hello
    | Welcome
    | Resume
    | Assign
    | Heartbeat
    | Progress
    | Result
    | Failed
    | Release
    | Cancel
    | Ack
    | Reject
    | Error
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    Challenge,
    Hello,
    Welcome,
    Resume,
    Assign,
    Heartbeat,
    Progress,
    Result,
    Failed,
    Release,
    Cancel,
    Ack,
    Reject,
    Error,
)


def _to_json(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    for name in _FIELD_NAMES[type(msg)]:
        value = getattr(msg, name)
        if value is None or isinstance(value, str | int):
            pass  # the common case first: the checks below are ABC and class lookups
        elif isinstance(value, Advert):
            value = value.to_json()
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        if value is None:
            continue
        out[name] = value
    return out


# By message type: dataclasses.fields() builds its tuple on every call (~1.5 us a message).
_FIELD_NAMES = {kind: tuple(f.name for f in fields(kind)) for kind in MESSAGE_TYPES}


def encode(msg: Message, *, validate: bool = True) -> str:
    """One JSON text frame; validated on the way out too, so we never send a bad frame.
    orjson on both sides (stdlib json was a fifth of a miner daemon's CPU per job): it
    writes the same compact UTF-8 text and refuses what is not JSON (NaN, lone
    surrogates) where the stdlib let it by.

    ``validate=False`` skips parsing the text back (the bulk of the cost), for a message
    whose fields were validated already by an earlier ``encode``; it still has to be JSON
    and within MAX_MESSAGE_BYTES."""
    try:
        text = orjson.dumps(_to_json(msg)).decode()
    except orjson.JSONEncodeError as exc:
        raise ProtocolError(f"{msg.TYPE} message has no JSON form: {exc}") from None
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{msg.TYPE} message is larger than {MAX_MESSAGE_BYTES} bytes")
    if validate:
        decode(text)
    return text


def decode(frame: str | bytes) -> Message:
    """Parse and validate one frame; ``ProtocolError`` says precisely what is wrong."""
    return decode_object(load_json(frame))


def load_json(frame: str | bytes) -> Any:
    """The JSON value of a frame, within the size bound (the codec checks its shape)."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        return orjson.loads(frame)
    except orjson.JSONDecodeError as exc:  # also bad UTF-8 and nesting past 1,024
        raise ProtocolError(f"message is not JSON: {exc}") from None


def decode_object(data: Any) -> Message:
    """Validate one parsed message object (``decode`` without the JSON parsing)."""
    if not isinstance(data, dict):
        raise ProtocolError("message must be a JSON object")
    version = data.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r}; this side speaks v1")
    kind = data.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None or not isinstance(kind, str):
        raise ProtocolError(f"unknown message type {kind!r}")
    r = FieldReader(kind, data)
    msg: Message = parser(r)
    r.done(r.used | {"v", "type"})
    return msg


def _job_id(r: FieldReader) -> str:
    return r.ident("job_id")


def _sha(r: FieldReader, name: str) -> str:
    value: str = r.text(name, max_chars=64, pattern=HEX64_RE)
    return value


def _parse_assign(r: FieldReader) -> Assign:
    kind = r.text("input_kind", choices=INPUT_KINDS)
    msg = Assign(
        job_id=_job_id(r),
        model=r.text("model"),
        input_kind=kind,
        input_sha256=_sha(r, "input_sha256"),
        chain_id=r.ident("chain_id"),
        client_address=r.text("client_address", max_chars=44, pattern=ADDRESS_RE),
        attempt=r.integer("attempt", 1, 1000),
        price_uait_per_unit=r.integer("price_uait_per_unit", 0, 2**53 - 1),
        unit=r.text("unit", choices=UNITS),
        lease_expires=r.text("lease_expires", max_chars=32),
        timeout_s=r.integer("timeout_s", 1, MAX_TIMEOUT_S),
        params=r.obj("params", MAX_PARAMS_BYTES, optional=True),
        input_json=r.text("input_json", max_chars=MAX_INPUT_BYTES, optional=True),
        input_b64=r.b64("input_b64", MAX_INPUT_BYTES, optional=True),
        input_filename=r.text("input_filename", optional=True),
    )
    if (kind == "file") != (msg.input_b64 is not None) or (kind == "json") != (
        msg.input_json is not None
    ):
        raise ProtocolError(
            "assign: a json input carries exactly 'input_json', a file input 'input_b64'"
        )
    return msg


def _parse_result(r: FieldReader) -> Result:
    receipt = r.obj("receipt", 8192)
    signature = r.obj("signature", 1024, optional=True)
    output_b64 = r.b64("output_b64", MAX_OUTPUT_BYTES)
    return Result(
        job_id=_job_id(r),
        receipt=receipt,
        signature=signature,
        output_b64=output_b64,
        content_type=r.text("content_type"),
        filename=r.text("filename", pattern=re.compile(r"^[^/\\\x00-\x1f]{1,128}$")),
        summary=r.obj("summary", MAX_SUMMARY_BYTES, optional=True),
    )


def _parse_hello(r: FieldReader) -> Hello:
    return Hello(
        public_key=_sha(r, "public_key"),
        signature=r.text("signature", max_chars=128, pattern=HEX128_RE),
        advert=Advert.from_json(r._get("advert", False), "hello.advert"),
    )


_PARSERS: dict[str, Any] = {
    "challenge": lambda r: Challenge(nonce=r.text("nonce", max_chars=128)),
    "hello": _parse_hello,
    "welcome": lambda r: Welcome(
        miner_id=r.ident("miner_id"),
        address=r.text("address", max_chars=44),
        lease_s=r.number("lease_s", 0.05, 86400),
        heartbeat_s=r.number("heartbeat_s", 0.01, 86400),
    ),
    "resume": lambda r: Resume(running=r.ids("running"), pending_results=r.ids("pending_results")),
    "assign": _parse_assign,
    "heartbeat": lambda r: Heartbeat(
        running=r.ids("running"), utilisation=r.integer("utilisation", 0, 100, optional=True) or 0
    ),
    "progress": lambda r: Progress(
        job_id=_job_id(r),
        percent=r.integer("percent", 0, 100),
        message=r.text("message", max_chars=MAX_TEXT_CHARS, optional=True),
    ),
    "result": _parse_result,
    "failed": lambda r: Failed(
        job_id=_job_id(r),
        error=r.text("error", max_chars=MAX_TEXT_CHARS),
        retryable=r.flag("retryable", False),
    ),
    "release": lambda r: Release(
        job_ids=r.ids("job_ids"),
        reason=r.text("reason", max_chars=MAX_TEXT_CHARS, optional=True) or "shutdown",
        draining=r.flag("draining", True),
    ),
    "cancel": lambda r: Cancel(
        job_id=_job_id(r), reason=r.text("reason", max_chars=MAX_TEXT_CHARS)
    ),
    "ack": lambda r: Ack(job_id=_job_id(r)),
    "reject": lambda r: Reject(
        job_id=_job_id(r),
        code=r.text("code", choices=REJECT_CODES),
        reason=r.text("reason", max_chars=MAX_TEXT_CHARS),
    ),
    "error": lambda r: Error(
        code=r.text("code", max_chars=64), message=r.text("message", max_chars=MAX_TEXT_CHARS)
    ),
}
assert set(_PARSERS) == {m.TYPE for m in MESSAGE_TYPES}
