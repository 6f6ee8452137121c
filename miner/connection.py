"""The websocket link to the coordinator: URL, capped exponential back-off, one session.

``open_session`` connects (API key on the upgrade request), answers the challenge with a
signature over ``auth_payload(nonce)`` and returns the live socket with the ``Welcome``.
Reconnecting forever is the daemon's loop; this module only knows one attempt at a time.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from miner.identity import Identity
from protocol.frames import BATCH_SUBPROTOCOL
from protocol.limits import (
    HANDSHAKE_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    RECONNECT_BASE_S,
    RECONNECT_CAP_S,
    WS_MAX_QUEUE,
)
from protocol.messages import Advert, Challenge, Error, Hello, Welcome, decode, encode

WS_PATH = "/v1/miners/ws"


class HandshakeError(Exception):
    """The coordinator refused us (bad key, bad signature) or spoke out of turn.

    ``permanent`` is true when retrying cannot help without a config change (401/403);
    the daemon still retries, but at the back-off cap.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def ws_url(coordinator: str) -> str:
    """http://host:8000 -> ws://host:8000/v1/miners/ws (https -> wss); ws URLs kept."""
    parts = urlsplit(coordinator.rstrip("/"))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"coordinator URL {coordinator!r} is not http(s):// or ws(s)://")
    path = parts.path if parts.path.endswith(WS_PATH) else parts.path + WS_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass
class Backoff:
    """Capped exponential back-off with full jitter (AWS architecture blog's recipe)."""

    base_s: float = RECONNECT_BASE_S
    cap_s: float = RECONNECT_CAP_S
    attempt: int = 0
    rng: random.Random | None = None

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return (self.rng or random).uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


async def open_session(
    url: str, api_key: str, identity: Identity, advert: Advert
) -> tuple[ClientConnection, Welcome]:
    """Connect and authenticate; the caller owns (and closes) the returned socket."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        ws = await connect(
            url,
            additional_headers=headers,
            max_size=MAX_MESSAGE_BYTES,
            max_queue=WS_MAX_QUEUE,
            open_timeout=HANDSHAKE_TIMEOUT_S,
            ping_interval=10,
            ping_timeout=20,
            # Offered, not required: a coordinator that does not select it gets (and
            # sends) one message a frame (protocol/frames.py).
            subprotocols=[Subprotocol(BATCH_SUBPROTOCOL)],
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace")[:300] if exc.response.body else ""
        raise HandshakeError(
            f"coordinator refused the connection: HTTP {status} {body}".strip(),
            permanent=status in (401, 403),
        ) from None
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):  # not wait_for: protocol/waits.py
            first = decode(await ws.recv())
        if not isinstance(first, Challenge):
            raise HandshakeError(f"expected a challenge, got {first.TYPE}")
        await ws.send(encode(Hello(identity.public_key, identity.sign_nonce(first.nonce), advert)))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            reply = decode(await ws.recv())
        if isinstance(reply, Error):
            raise HandshakeError(f"coordinator refused us: {reply.message}", permanent=True)
        if not isinstance(reply, Welcome):
            raise HandshakeError(f"expected welcome, got {reply.TYPE}")
        if reply.miner_id != identity.miner_id:
            raise HandshakeError(f"coordinator calls us {reply.miner_id}, not {identity.miner_id}")
    except BaseException:
        await ws.close()
        raise
    return ws, reply
