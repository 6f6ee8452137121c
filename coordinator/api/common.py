"""Request decoding and response encoding shared by the handlers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from coordinator.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
)
from coordinator.service.keys import ApiKey

API_KEY: web.RequestKey[ApiKey] = web.RequestKey("ait_api_key")


def caller(request: web.Request) -> ApiKey:
    key: ApiKey | None = request.get(API_KEY)
    if key is None:  # the auth middleware sets it on every non-public route
        raise Unauthorized("an API key is required")
    return key


CLIENT_ROLES = ("client", "admin")  # who may submit and manage jobs and upload inputs


def client_caller(request: web.Request) -> ApiKey:
    """The caller, if its role may submit and manage jobs (a miner key may not)."""
    key = caller(request)
    if key.role not in CLIENT_ROLES:
        raise Forbidden(f"a {key.role} key may not do this; use a client key")
    return key


def json_response(document: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("the request body is empty; a JSON object is expected")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(value).__name__}")
    return value


async def read_body(request: web.Request) -> bytes:
    limit = request.app._client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return await request.read()


async def read_json_object(request: web.Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request))


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


async def read_multipart(request: web.Request, allowed: Sequence[str]) -> dict[str, Part]:
    """Every part of a multipart/form-data body, held to the body size limit."""
    limit = request.app._client_max_size
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    parts: dict[str, Part] = {}
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            name = part.name or ""
            if name not in allowed:
                raise ValidationFailed(
                    [
                        (
                            name or "(unnamed)",
                            f"unknown multipart part; expected {', '.join(allowed)}",
                        )
                    ]
                )
            if name in parts:
                raise BadRequest(f"the multipart part {name!r} is given twice")
            chunks = []
            while chunk := await part.read_chunk(65536):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
                chunks.append(chunk)
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            parts[name] = Part(name, part.filename, content_type, b"".join(chunks))
    except (ValueError, AssertionError, KeyError, RuntimeError, HttpProcessingError) as exc:
        # HttpProcessingError: a part's headers do not parse (e.g. control bytes in a name)
        raise BadRequest(f"malformed multipart body: {exc}") from None
    return parts
