"""Request middlewares: metrics (outermost), problem rendering, then auth + rate limits."""

from __future__ import annotations

import time

from aiohttp import web

from coordinator.api.common import API_KEY
from coordinator.appkeys import DATABASE, METRICS, SETTINGS
from coordinator.errors import RESPONSE_HEADERS, Handler, RateLimited, Unauthorized
from coordinator.ratelimit import RateLimiter
from coordinator.service.keys import authenticate

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/openapi.json"})
# The miner websocket authenticates itself (API key + signed nonce, docs/protocol.md).
SELF_AUTHENTICATED_PATHS = frozenset({"/v1/miners/ws"})
RATE_LIMITER: web.AppKey[RateLimiter] = web.AppKey("ait_rate_limiter")


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        request.app[METRICS].observe_request(
            request.method, _route_label(request), status, time.perf_counter() - start
        )


def api_key_of(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("X-Api-Key", "").strip()
    return key or None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the public ones needs a live key; each key is rate limited."""
    if (
        request.match_info.http_exception is not None  # 404/405: say so, key or not
        or request.path in PUBLIC_PATHS
        or request.path in SELF_AUTHENTICATED_PATHS
    ):
        return await handler(request)
    token = api_key_of(request)
    if token is None:
        raise Unauthorized("no API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'")
    key = await authenticate(request.app[DATABASE], token)
    if key is None:
        raise Unauthorized("unknown or revoked API key")
    limit = request.app[SETTINGS].rate_limit(key.role)
    decision = request.app[RATE_LIMITER].check(key.key_id, limit)
    headers: dict[str, str] = {}
    if decision.limit:
        headers = {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
        }
    request[RESPONSE_HEADERS] = headers
    if not decision.allowed:
        request.app[METRICS].rate_limited += 1
        raise RateLimited(decision.retry_after_s, decision.limit)
    request[API_KEY] = key
    response = await handler(request)
    if not response.prepared:
        response.headers.update(headers)
    return response
