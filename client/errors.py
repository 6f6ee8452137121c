"""Client errors: one root, one class per problem status/type of the coordinator.

```
AitError
├── ConnectionFailed            the coordinator could not be reached (or the call timed out)
├── WaitTimedOut                `wait()` gave up before the job ended
└── ApiError                    the coordinator answered 4xx/5xx (RFC 9457 problem details)
    ├── BadRequest              400
    ├── Unauthorized            401
    ├── InsufficientFunds       402
    ├── Forbidden               403
    │   └── FaucetDisabled      403 faucet-disabled
    ├── NotFound                404
    ├── Conflict                409
    ├── PayloadTooLarge         413
    ├── ValidationFailed        422, `errors` names each bad field
    ├── RateLimited             429, `retry_after` seconds
    └── ServerError             5xx (and any answer that is not problem JSON)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class AitError(Exception):
    """Root of every error the SDK raises; `str(err)` is one line fit for a terminal."""


class ConnectionFailed(AitError):
    pass


class WaitTimedOut(AitError):
    pass


class ApiError(AitError):
    def __init__(
        self,
        status: int,
        problem: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.problem = dict(problem)
        self.type = str(problem.get("type") or "about:blank")
        self.title = str(problem.get("title") or "")
        self.detail = str(problem.get("detail") or self.title or f"HTTP {status}")
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.title or self.type}: {self.detail}")


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class InsufficientFunds(ApiError):
    pass


class Forbidden(ApiError):
    pass


class FaucetDisabled(Forbidden):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class PayloadTooLarge(ApiError):
    pass


class ValidationFailed(ApiError):
    @property
    def errors(self) -> list[dict[str, Any]]:
        items = self.problem.get("errors")
        return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


class RateLimited(ApiError):
    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


class ServerError(ApiError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: InsufficientFunds,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
}
_BY_TYPE: dict[str, type[ApiError]] = {"faucet-disabled": FaucetDisabled}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; HTTP dates are rare from our coordinator and read as None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0)


def error_from_response(
    status: int, body: object, headers: Mapping[str, str] | None = None
) -> ApiError:
    """The typed error for a 4xx/5xx answer; `body` is the decoded JSON (or raw text)."""
    if isinstance(body, Mapping):
        problem: Mapping[str, Any] = body
    else:
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        problem = {"title": f"HTTP {status}", "detail": text.strip()[:300] or f"HTTP {status}"}
    cls = _BY_TYPE.get(str(problem.get("type")))
    if cls is None:
        cls = ServerError if status >= 500 else _BY_STATUS.get(status, ApiError)
    return cls(status, problem, headers)
