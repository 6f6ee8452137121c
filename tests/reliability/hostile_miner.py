"""A miner that speaks the v1 wire protocol by hand (docs/protocol.md) with a real Ed25519
key, so a test can send what an honest daemon never would."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from chain.receipts import build_receipt, sign_receipt
from protocol.canonical import sha256_hex
from protocol.keys import PrivateKey, generate_private_key, public_key_hex, sign_hex
from protocol.messages import (
    Advert,
    Challenge,
    GpuInfo,
    Hello,
    Message,
    ModelOffer,
    Result,
    Resume,
    Welcome,
    auth_payload,
    decode,
    encode,
)
from protocol.timefmt import iso_ms, now_ms

# Dearer than the honest daemons, so the dispatcher prefers them while they are free.
HOSTILE_PRICE_UAIT = 50


def advert(price_uait: int = HOSTILE_PRICE_UAIT, model: str = "echo") -> Advert:
    return Advert(
        gpus=(GpuInfo("cpu", 0, 1),),
        models=(ModelOffer(model, "echo", "byte", price_uait),),
        max_concurrency=1,
        software_version="hostile/1",
    )


def ws_url(http_url: str) -> str:
    return http_url.replace("http", "ws", 1) + "/v1/miners/ws"


class HostileMiner:
    def __init__(self, ws: ClientConnection, key: PrivateKey, welcome: Welcome) -> None:
        self.ws, self.key, self.welcome = ws, key, welcome

    @classmethod
    async def connect(
        cls,
        url: str,
        api_key: str,
        key: PrivateKey | None = None,
        offer: Advert | None = None,
        **ws_options: Any,
    ) -> HostileMiner:
        key = key or generate_private_key()
        ws = await connect(
            ws_url(url), additional_headers={"Authorization": f"Bearer {api_key}"}, **ws_options
        )
        challenge = decode(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(challenge, Challenge)
        signature = sign_hex(key, auth_payload(challenge.nonce))
        hello = Hello(public_key_hex(key), signature, offer or advert())
        await ws.send(encode(hello))
        welcome = decode(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(welcome, Welcome), welcome
        await ws.send(encode(Resume()))
        return cls(ws, key, welcome)

    async def send(self, msg: Message) -> None:
        await self.ws.send(encode(msg))

    async def recv(self, kind: type[Any], within_s: float = 10) -> Any:
        """The next frame of `kind`, skipping others."""
        async with asyncio.timeout(within_s):
            while True:
                msg = decode(await self.ws.recv())
                if isinstance(msg, kind):
                    return msg

    def forged_result(self, job: dict[str, Any], client_address: str) -> Result:
        """A correctly signed, self-consistent result for a job this miner was never
        leased: every field it could learn (job id, model, input hash, chain, client)."""
        output = b'"stolen"'
        now = iso_ms(now_ms())
        assert now is not None
        receipt = build_receipt(
            job_id=job["job_id"],
            chain_id=job["chain_id"],
            miner_address=self.welcome.address,
            client_address=client_address,
            model=job["model"],
            input_sha256=job["input_sha256"],
            output_sha256=sha256_hex(output),
            units=len(output),
            unit="byte",
            price_uait_per_unit=HOSTILE_PRICE_UAIT,
            attempt=max(1, int(job["attempts"])),
            started_at=now,
            completed_at=now,
            public_key=public_key_hex(self.key),
        )
        return Result(
            job_id=job["job_id"],
            receipt=receipt,
            signature=sign_receipt(self.key, receipt),
            output_b64=base64.b64encode(output).decode(),
            content_type="application/json",
            filename="output.json",
        )
