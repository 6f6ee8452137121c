"""Small HTTP helpers for the API tests (no mocks: real requests to a real server)."""

from __future__ import annotations

from typing import Any

import aiohttp
from ait_harness import KeyInfo


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    key: KeyInfo | None = None,
    **kwargs: Any,
) -> tuple[int, Any, Any]:
    """(status, decoded JSON body or text, headers). Every error must be problem+json."""
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers.update(key.headers)
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        text = await resp.text()
        ctype = resp.headers.get("Content-Type", "")
        if resp.status >= 400:
            assert ctype.startswith("application/problem+json"), (resp.status, ctype, text)
            assert resp.status < 500, text
        if "json" in ctype:
            import json

            body = json.loads(text)
            if resp.status >= 400:
                assert body["status"] == resp.status
                assert {"type", "title", "status", "detail"} <= set(body)
            return resp.status, body, resp.headers
        return resp.status, text, resp.headers


async def read_events(resp: aiohttp.ClientResponse, into: list[tuple[str, Any]]) -> None:
    """Append each server-sent event of `resp` to `into` as (event name, decoded data)."""
    import json

    name = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            into.append((name, json.loads(line[6:])))
