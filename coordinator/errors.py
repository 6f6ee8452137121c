"""Coordinator errors: one root, each carrying its RFC 9457 problem type and HTTP status.

```
CoordinatorError (500 internal)
├── BadRequest (400 bad-request)          body not JSON / not an object / bad multipart
├── Unauthorized (401 unauthorized)       no key, unknown key, revoked key
├── InsufficientFunds (402 insufficient-funds)
├── Forbidden (403 forbidden)
│   └── FaucetDisabled (403 faucet-disabled)
├── NotFound (404 not-found)
├── Conflict (409 conflict)               the action does not fit the job's state
├── PayloadTooLarge (413 payload-too-large)
├── ValidationFailed (422 validation-failed, with `errors`)
├── RateLimited (429 rate-limited, with Retry-After)
└── Unavailable (503 unavailable)
```
`problem_middleware` renders these, aiohttp's own HTTP errors (404, 405, 413, ...) and any
unexpected exception (logged; the client sees a bare 500 problem, never a traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Headers every response to this request carries, errors included (X-RateLimit-*).
RESPONSE_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("ait_response_headers")


class CoordinatorError(Exception):
    status = 500
    type = "internal"
    title = "Internal server error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    def headers(self) -> Mapping[str, str]:
        return {}

    def to_problem(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class BadRequest(CoordinatorError):
    status, type, title = 400, "bad-request", "Bad request"


class Unauthorized(CoordinatorError):
    status, type, title = 401, "unauthorized", "Unauthorized"

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="ait"'}


class InsufficientFunds(CoordinatorError):
    status, type, title = 402, "insufficient-funds", "Insufficient funds"


class Forbidden(CoordinatorError):
    status, type, title = 403, "forbidden", "Forbidden"


class FaucetDisabled(Forbidden):
    type, title = "faucet-disabled", "Faucet disabled"


class NotFound(CoordinatorError):
    status, type, title = 404, "not-found", "Not found"


class Conflict(CoordinatorError):
    status, type, title = 409, "conflict", "Conflict"


class PayloadTooLarge(CoordinatorError):
    status, type, title = 413, "payload-too-large", "Payload too large"


class ValidationFailed(CoordinatorError):
    """422; `errors` names each bad field: `{"field", "pointer", "detail"}`."""

    status, type, title = 422, "validation-failed", "Validation failed"

    def __init__(self, errors: Sequence[tuple[str, str]], detail: str | None = None) -> None:
        items = [
            {"field": name, "pointer": "#/" + name.replace(".", "/"), "detail": text}
            for name, text in errors
        ]
        summary = detail or "; ".join(f"{name}: {text}" for name, text in errors)
        super().__init__(summary or self.title, errors=items)


class RateLimited(CoordinatorError):
    status, type, title = 429, "rate-limited", "Too many requests"

    def __init__(self, retry_after_s: int, limit: int, detail: str | None = None) -> None:
        super().__init__(detail or f"rate limit of {limit} requests reached")
        self.retry_after_s = retry_after_s
        self.limit = limit

    def headers(self) -> Mapping[str, str]:
        return {
            "Retry-After": str(self.retry_after_s),
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": "0",
        }


class Unavailable(CoordinatorError):
    status, type, title = 503, "unavailable", "Service unavailable"


def problem_response(
    status: int,
    problem: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(problem),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _http_problem(exc: web.HTTPException) -> web.Response:
    status = exc.status
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    slug = title.lower().replace(" ", "-").replace("'", "")
    detail = exc.text if exc.text and not exc.text.startswith(f"{status}:") else title
    if status == 413:
        slug, detail = "payload-too-large", "request body is larger than the configured limit"
    elif status == 405:
        allowed = exc.headers.get("Allow", "")
        detail = f"method not allowed; allowed: {allowed}"
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return problem_response(
        status, {"type": slug, "title": title, "status": status, "detail": detail}, headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except CoordinatorError as exc:
        headers = {**request.get(RESPONSE_HEADERS, {}), **exc.headers()}
        return problem_response(exc.status, exc.to_problem(), headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = _http_problem(exc)
        problem.headers.update(request.get(RESPONSE_HEADERS) or {})
        return problem
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(
            500,
            {
                "type": "internal",
                "title": "Internal server error",
                "status": 500,
                "detail": "an unexpected error happened; it has been logged",
            },
        )
    return response
