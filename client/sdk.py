"""Async SDK for the coordinator's REST API (SPEC §3), over aiohttp.

```python
async with CoordinatorClient("http://127.0.0.1:8000", api_key) as ait:
    accepted = await ait.submit("echo", "hello")
    job = await ait.wait(accepted["job_id"])
```
Every method answers the decoded JSON of the endpoint; errors raise `client.errors`.
429 and 503 answers are retried up to `max_retries` times, honouring Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from client.errors import (
    AitError,
    ApiError,
    ConnectionFailed,
    Forbidden,
    NotFound,
    ServerError,
    Unauthorized,
    WaitTimedOut,
    error_from_response,
    parse_retry_after,
)
from client.sse import SseParser

log = logging.getLogger(__name__)

DEFAULT_COORDINATOR = "http://127.0.0.1:8000"
TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out"})
RETRY_STATUSES = frozenset({429, 503})
MAX_BACKOFF_S = 30.0  # cap on any one wait, Retry-After included
MAX_OUTAGE_S = 60.0  # wait() rides out a coordinator outage this long
CHUNK_BYTES = 1 << 16

Body = Callable[[], Any]  # builds a fresh request body per attempt (FormData is single-use)
EventCallback = Callable[[dict[str, Any]], None]


def _seg(value: str | int) -> str:
    """One URL path segment, escaped so an id can never change the route."""
    return quote(str(value), safe="")


def _params(**values: Any) -> dict[str, str]:
    return {k.rstrip("_"): str(v) for k, v in values.items() if v is not None}


def backoff_s(attempt: int, retry_after: float | None) -> float:
    """Retry-After when given, else exponential from 0.5 s with jitter; capped either way."""
    if retry_after is not None:
        return min(retry_after, MAX_BACKOFF_S)
    return min(0.5 * 2.0**attempt, MAX_BACKOFF_S) * random.uniform(0.8, 1.2)


class CoordinatorClient:
    def __init__(
        self,
        base_url: str = DEFAULT_COORDINATOR,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"User-Agent": "ait-client/0.1"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            # total=None: streams (events, downloads) may last; each read is bounded instead.
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.timeout, sock_read=self.timeout
            )
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout)
        return self._session

    # -- transport -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        body: Body | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A successful (2xx) response; retries 429/503, raises typed errors otherwise."""
        url = self.base_url + path
        extra: dict[str, Any] = {} if client_timeout is None else {"timeout": client_timeout}
        for attempt in range(self.max_retries + 1):
            data = body() if body is not None else None
            try:
                response = await self._http().request(
                    method, url, params=params, json=json_body, data=data, **extra
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ConnectionFailed(f"cannot reach {self.base_url}: {_reason(exc)}") from exc
            try:
                if response.status < 400:
                    yield response
                    return
                error = await _read_error(response)
            finally:
                response.release()
            if response.status not in RETRY_STATUSES or attempt == self.max_retries:
                raise error
            delay = backoff_s(attempt, parse_retry_after(response.headers.get("Retry-After")))
            log.info("retrying", extra={"status": response.status, "delay_s": delay})
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._open(method, path, **kwargs) as response:
            try:
                return await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ConnectionFailed(f"reading {path}: {_reason(exc)}") from exc
            except ValueError as exc:
                raise ApiError(
                    response.status, {"title": "bad answer", "detail": "answer is not JSON"}
                ) from exc

    # -- jobs ------------------------------------------------------------------------------
    async def submit(
        self,
        model: str,
        input: Any = None,
        *,
        input_file: str | Path | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """POST /v1/jobs. `fields` are the optional body fields of SPEC §3 (priority,
        requirements, timeout_seconds, chain_id, max_price, name, params, output_config,
        fail_if_unmatched); None values are left out. With `input_file` the body is sent as
        multipart (a `data` part and a `file` part)."""
        document: dict[str, Any] = {"model": model}
        document.update({k: v for k, v in fields.items() if v is not None})
        if input_file is None:
            document["input"] = input
            return dict(await self._json("POST", "/v1/jobs", json_body=document))
        file_path = _existing_file(input_file)

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("data", json.dumps(document), content_type="application/json")
            data.add_field("file", file_path.open("rb"), filename=file_path.name)
            return data

        return dict(await self._json("POST", "/v1/jobs", body=form))

    async def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """POST /v1/jobs/batch: 1-100 job bodies (as `POST /v1/jobs` takes them), accepted
        all or none; the answers in order."""
        answer = await self._json("POST", "/v1/jobs/batch", json_body={"jobs": list(jobs)})
        return [dict(job) for job in answer["jobs"]]

    async def upload_file(self, path: str | Path) -> dict[str, Any]:
        file_path = _existing_file(path)

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("file", file_path.open("rb"), filename=file_path.name)
            return data

        return dict(await self._json("POST", "/v1/files", body=form))

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/v1/jobs/{_seg(job_id)}"))

    async def list_jobs(
        self, status: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        params = _params(status=status, limit=limit, offset=offset)
        return dict(await self._json("GET", "/v1/jobs", params=params))

    async def latest(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/jobs/latest"))

    async def history(self, from_: str | None = None, to: str | None = None) -> dict[str, Any]:
        params = _params(from_=from_, to=to)
        return dict(await self._json("GET", "/v1/jobs/history", params=params))

    async def rename(self, job_id: str, name: str) -> dict[str, Any]:
        path = f"/v1/jobs/{_seg(job_id)}"
        return dict(await self._json("PUT", path, json_body={"name": name}))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(await self._json("DELETE", f"/v1/jobs/{_seg(job_id)}"))

    async def receipt(self, job_id: str) -> dict[str, Any]:
        return dict(await self._json("GET", f"/v1/jobs/{_seg(job_id)}/receipt"))

    async def download(self, job_id: str, dest: str | Path | None = None) -> Path:
        """Stream the output to `dest` (a file, or a directory to keep the server's file
        name; default: the current directory). Written to a temporary name first, so a cut
        download never leaves a truncated file under the final name."""
        path = f"/v1/jobs/{_seg(job_id)}/download"
        async with self._open("GET", path) as response:
            target = _download_target(dest, response, job_id)
            partial = target.with_name(target.name + ".part")
            try:
                with partial.open("wb") as handle:
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        handle.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                partial.unlink(missing_ok=True)
                raise ConnectionFailed(f"download of {job_id} cut: {_reason(exc)}") from exc
            partial.replace(target)
        return target

    async def events(
        self, job_id: str, *, idle_timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's server-sent events as dicts (the JSON `data`, plus `event` when the
        payload names no `type`). Ends when the server closes the stream; raises
        `TimeoutError` if nothing (not even a keep-alive) arrives for `idle_timeout`."""
        path = f"/v1/jobs/{_seg(job_id)}/events"
        async for payload in self._stream(path, f"event stream of {job_id}", idle_timeout):
            yield payload

    async def all_events(
        self, *, idle_timeout: float | None = None, statuses: Sequence[str] = ()
    ) -> AsyncIterator[dict[str, Any]]:
        """GET /v1/jobs/events: events of all the caller's jobs from now on, as `events`
        gives them (`type` "status", "progress" or "dropped"); never ends by itself.
        `statuses` (e.g. the ends: "completed", "failed", "cancelled", "timed_out"): only
        the status events of jobs entering those, and progress only with "running"."""
        path = "/v1/jobs/events"
        if statuses:
            path += "?status=" + quote(",".join(statuses), safe=",")
        async for payload in self._stream(path, "event stream", idle_timeout):
            yield payload

    async def _stream(
        self, path: str, what: str, idle_timeout: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        parser = SseParser()
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_read=idle_timeout)
        async with self._open("GET", path, client_timeout=timeout) as response:
            try:
                async for line in response.content:
                    event = parser.feed_line(line)
                    if event is None or not event.data:
                        continue
                    try:
                        payload = json.loads(event.data)
                    except ValueError:
                        payload = {"data": event.data}
                    if not isinstance(payload, dict):
                        payload = {"data": payload}
                    payload.setdefault("type", event.event)
                    yield payload
            except aiohttp.ClientPayloadError as exc:
                raise ConnectionFailed(f"{what} cut: {_reason(exc)}") from exc

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        on_event: EventCallback | None = None,
        poll_interval: float = 1.0,
    ) -> dict[str, Any]:
        """Wait until the job ends and answer the final job object. Follows the event
        stream; when the stream is unavailable or silent it falls back to polling."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        job = await self.get_job(job_id)
        while job.get("status") not in TERMINAL:
            if on_event is not None:
                on_event(job)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise WaitTimedOut(f"job {job_id} still {job.get('status')} after {timeout_s} s")
            # asyncio.timeout, not wait_for: protocol/waits.py
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._follow(job_id, on_event, poll_interval)
            job = await self._reread(job_id, poll_interval)
        return job

    async def _reread(self, job_id: str, poll_interval: float) -> dict[str, Any]:
        """The job now; through a coordinator outage (restart, proxy 5xx) of up to
        `MAX_OUTAGE_S` it keeps trying, since the job itself lives on."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + MAX_OUTAGE_S
        attempt = 0
        while True:
            try:
                return await self.get_job(job_id)
            except (ConnectionFailed, ServerError) as exc:
                if loop.time() >= give_up:
                    raise
                log.info("coordinator unavailable while waiting", extra={"reason": str(exc)})
                await asyncio.sleep(max(poll_interval, backoff_s(attempt, None)))
                attempt += 1

    async def _follow(
        self, job_id: str, on_event: EventCallback | None, poll_interval: float
    ) -> None:
        """Follow events until one says the job ended; on a broken stream, poll instead."""
        idle = max(5.0, poll_interval * 5)
        try:
            async for event in self.events(job_id, idle_timeout=idle):
                if on_event is not None:
                    on_event(event)
                if event.get("status") in TERMINAL:
                    return
        except (Unauthorized, Forbidden, NotFound):
            raise
        except (AitError, TimeoutError) as exc:
            log.info("event stream unavailable, polling", extra={"reason": str(exc)})
        # The stream ended or broke: one poll interval, then the caller re-reads the job.
        await asyncio.sleep(poll_interval)

    # -- wallets, chain, marketplace ---------------------------------------------------------
    async def me(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/me"))

    async def balance(
        self, address: str | None = None, chain_id: str | None = None
    ) -> dict[str, Any]:
        """The balance of `address`, or of the address the API key is bound to."""
        address = address or (await self.me())["address"]
        path = f"/v1/wallets/{_seg(address)}/balance"
        return dict(await self._json("GET", path, params=_params(chain_id=chain_id)))

    async def wallet_history(
        self,
        address: str | None = None,
        chain_id: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        address = address or (await self.me())["address"]
        path = f"/v1/wallets/{_seg(address)}/history"
        params = _params(chain_id=chain_id, from_=from_, to=to, limit=limit, offset=offset)
        return dict(await self._json("GET", path, params=params))

    async def faucet(
        self, amount: float, address: str | None = None, chain_id: str | None = None
    ) -> dict[str, Any]:
        address = address or (await self.me())["address"]
        body: dict[str, Any] = {"address": address, "amount": amount}
        if chain_id is not None:
            body["chain_id"] = chain_id
        return dict(await self._json("POST", "/v1/faucet", json_body=body))

    async def chains(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/chains"))

    async def blocks(
        self, chain_id: str, from_height: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        path = f"/v1/chain/{_seg(chain_id)}/blocks"
        params = _params(from_height=from_height, limit=limit)
        return dict(await self._json("GET", path, params=params))

    async def all_blocks(self, chain_id: str, page: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every block of the chain from height 0, fetched page by page."""
        height = 0
        while True:
            batch = (await self.blocks(chain_id, from_height=height, limit=page)).get("blocks")
            if not isinstance(batch, list) or not batch:
                return
            for block in batch:
                yield block
            height += len(batch)

    async def block(self, chain_id: str, height: int) -> dict[str, Any]:
        path = f"/v1/chain/{_seg(chain_id)}/blocks/{_seg(height)}"
        return dict(await self._json("GET", path))

    async def miners(
        self, model: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        """Connected miners by id; those serving `model` when given, a page of `limit` from
        `offset` when given (without `limit`: all of them)."""
        params = _params(model=model, limit=limit, offset=offset)
        return dict(await self._json("GET", "/v1/miners", params=params))

    async def models(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/models"))

    async def health(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/healthz"))

    async def openapi(self) -> dict[str, Any]:
        return dict(await self._json("GET", "/v1/openapi.json"))


async def _read_error(response: aiohttp.ClientResponse) -> ApiError:
    try:
        raw = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        raw = b""
    body: object = raw
    with contextlib.suppress(ValueError):
        body = json.loads(raw)
    return error_from_response(response.status, body, dict(response.headers))


def _existing_file(path: str | Path) -> Path:
    file_path = Path(path)
    if not file_path.is_file():
        raise AitError(f"file {file_path} does not exist")
    return file_path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.strerror:
        return exc.os_error.strerror.lower()
    text = str(exc).strip()
    return text or type(exc).__name__


def _download_target(
    dest: str | Path | None, response: aiohttp.ClientResponse, job_id: str
) -> Path:
    target = Path(dest) if dest is not None else Path.cwd()
    if target.is_dir():
        name = (
            Path(response.content_disposition.filename or "").name
            if (response.content_disposition is not None)
            else ""
        )
        if name in (".", ".."):  # a directory, not a file name
            name = ""
        target = target / (name or f"{job_id}.out")
    return target
