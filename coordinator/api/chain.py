"""`GET /v1/chain/{chain_id}/blocks` and `GET /v1/chain/{chain_id}/blocks/{height}`.

The block log is public to any authenticated key (the auth middleware has already checked
the key); blocks are answered exactly as sealed, so clients can audit them offline.
"""

from __future__ import annotations

import re

from aiohttp import web

from coordinator import appkeys
from coordinator.api.common import caller, json_response
from coordinator.errors import ValidationFailed
from coordinator.service import block_reads as block_service

routes = web.RouteTableDef()

MAX_HEIGHT = 2**53 - 1  # heights are JSON integers: keep them in the exact range
_INT_RE = re.compile(r"^-?[0-9]{1,20}$")


def _int_param(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not _INT_RE.fullmatch(raw):
        raise ValidationFailed([(name, f"must be an integer, got {raw[:40]!r}")])
    value = int(raw)
    if not low <= value <= high:
        raise ValidationFailed([(name, f"must be between {low} and {high}")])
    return value


@routes.get("/v1/chain/{chain_id}/blocks")
async def list_blocks(request: web.Request) -> web.Response:
    caller(request)  # any role may read the log
    from_height = _int_param("from_height", request.query.get("from_height"), 0, 0, MAX_HEIGHT)
    limit = _int_param(
        "limit",
        request.query.get("limit"),
        block_service.DEFAULT_BLOCKS_PER_PAGE,
        1,
        block_service.MAX_BLOCKS_PER_PAGE,
    )
    page = await block_service.blocks_page(
        request.app[appkeys.DATABASE],
        request.app[appkeys.SETTINGS],
        request.match_info["chain_id"],
        from_height,
        limit,
    )
    return json_response(page)


@routes.get("/v1/chain/{chain_id}/blocks/{height}")
async def get_block(request: web.Request) -> web.Response:
    caller(request)
    height = _int_param("height", request.match_info["height"], 0, 0, MAX_HEIGHT)
    block = await block_service.one_block(
        request.app[appkeys.DATABASE],
        request.app[appkeys.SETTINGS],
        request.match_info["chain_id"],
        height,
    )
    return json_response(block)
