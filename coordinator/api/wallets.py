"""Wallets, faucet and chains."""

from __future__ import annotations

from aiohttp import web

from coordinator.api.common import caller, json_response, read_json_object
from coordinator.api.validate import Fields, query_date_ms, query_int
from coordinator.appkeys import COORDINATOR_KEY
from coordinator.errors import ValidationFailed
from coordinator.service import wallets as wallet_service
from coordinator.service.core import Core
from protocol.keys import is_address, public_key_hex

routes = web.RouteTableDef()


@routes.get("/v1/wallets/{address}/balance")
async def balance(request: web.Request) -> web.Response:
    key = caller(request)
    unknown = set(request.query) - {"chain_id"}
    if unknown:
        raise ValidationFailed([(name, "unknown query parameter") for name in sorted(unknown)])
    answer = await wallet_service.balance(
        Core.of(request.app), key, request.match_info["address"], request.query.get("chain_id")
    )
    return json_response(answer)


@routes.get("/v1/wallets/{address}/history")
async def history(request: web.Request) -> web.Response:
    key = caller(request)
    errors: list[tuple[str, str]] = []
    from_ms = query_date_ms(request.query, "from", errors, end=False)
    to_ms = query_date_ms(request.query, "to", errors, end=True)
    limit = query_int(request.query, "limit", 100, 1, 1000, errors)
    offset = query_int(request.query, "offset", 0, 0, 10**9, errors)
    unknown = set(request.query) - {"chain_id", "from", "to", "limit", "offset"}
    errors.extend((name, "unknown query parameter") for name in sorted(unknown))
    if errors:
        raise ValidationFailed(errors)
    answer = await wallet_service.history(
        Core.of(request.app),
        key,
        request.match_info["address"],
        request.query.get("chain_id") or None,
        from_ms,
        to_ms,
        limit,
        offset,
    )
    return json_response(answer)


@routes.post("/v1/faucet")
async def faucet(request: web.Request) -> web.Response:
    key = caller(request)
    data = await read_json_object(request)
    f = Fields(data, ("address", "amount", "chain_id"))
    address = f.string("address", max_len=44) or key.address
    if not is_address(address):
        f.error("address", "must be an address (ait1 + 40 lower-case hex)")
    amount = f.amount_uait(
        "amount", required=True, low_uait=1, high_uait=wallet_service.FAUCET_MAX_UAIT
    )
    chain_id = f.string("chain_id", max_len=64)
    f.check()
    assert amount is not None
    answer = await wallet_service.faucet(Core.of(request.app), address, amount, chain_id)
    return json_response(answer)


@routes.get("/v1/chains")
async def chains(request: web.Request) -> web.Response:
    caller(request)
    core = Core.of(request.app)
    public_key = public_key_hex(request.app[COORDINATOR_KEY])
    items = [
        {
            "chain_id": chain.id,
            "id": chain.id,
            "faucet": chain.faucet,
            "default": chain.id == core.settings.default_chain,
            "coordinator_public_key": public_key,
            "fee_bps": core.settings.fee_bps,
            "block_interval_seconds": core.settings.block_interval_seconds,
        }
        for chain in core.settings.chains
    ]
    return json_response(
        {
            "chains": items,
            "default_chain": core.settings.default_chain,
            "coordinator_public_key": public_key,
        }
    )
