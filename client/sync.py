"""Blocking wrapper over `CoordinatorClient` for scripts and notebooks-free code.

```python
with Client("http://127.0.0.1:8000", api_key) as ait:
    job = ait.wait(ait.submit("echo", "hello")["job_id"])
```
Each `Client` owns a private event loop and runs one call at a time on it, so the
aiohttp session (bound to that loop) is reused across calls. Not for use inside a running
event loop (use the async client there); not thread-safe (one Client per thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from client.sdk import DEFAULT_COORDINATOR, CoordinatorClient, EventCallback

T = TypeVar("T")


class Client:
    def __init__(
        self,
        base_url: str = DEFAULT_COORDINATOR,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
    ) -> None:
        self.aio = CoordinatorClient(base_url, api_key, timeout=timeout, max_retries=max_retries)
        self._loop = asyncio.new_event_loop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this Client is closed")
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.aio.close())
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _iterate(self, agen: AsyncIterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    yield self._run(anext(agen))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            # Close the stream now; a generator dropped mid-call (garbage collected while
            # the loop runs another call) is left to the session's close instead.
            close = getattr(agen, "aclose", None)
            if close is not None and not self._loop.is_closed() and not self._loop.is_running():
                self._run(close())

    # -- jobs ------------------------------------------------------------------------------
    def submit(
        self, model: str, input: Any = None, *, input_file: str | Path | None = None, **fields: Any
    ) -> dict[str, Any]:
        return self._run(self.aio.submit(model, input, input_file=input_file, **fields))

    def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self._run(self.aio.submit_batch(jobs))

    def upload_file(self, path: str | Path) -> dict[str, Any]:
        return self._run(self.aio.upload_file(path))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._run(self.aio.get_job(job_id))

    def list_jobs(
        self, status: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        return self._run(self.aio.list_jobs(status, limit, offset))

    def latest(self) -> dict[str, Any]:
        return self._run(self.aio.latest())

    def history(self, from_: str | None = None, to: str | None = None) -> dict[str, Any]:
        return self._run(self.aio.history(from_, to))

    def rename(self, job_id: str, name: str) -> dict[str, Any]:
        return self._run(self.aio.rename(job_id, name))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._run(self.aio.cancel(job_id))

    def receipt(self, job_id: str) -> dict[str, Any]:
        return self._run(self.aio.receipt(job_id))

    def download(self, job_id: str, dest: str | Path | None = None) -> Path:
        return self._run(self.aio.download(job_id, dest))

    def events(self, job_id: str, *, idle_timeout: float | None = None) -> Iterator[dict[str, Any]]:
        return self._iterate(self.aio.events(job_id, idle_timeout=idle_timeout))

    def all_events(
        self, *, idle_timeout: float | None = None, statuses: Sequence[str] = ()
    ) -> Iterator[dict[str, Any]]:
        return self._iterate(self.aio.all_events(idle_timeout=idle_timeout, statuses=statuses))

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        on_event: EventCallback | None = None,
        poll_interval: float = 1.0,
    ) -> dict[str, Any]:
        return self._run(
            self.aio.wait(
                job_id, timeout_s=timeout_s, on_event=on_event, poll_interval=poll_interval
            )
        )

    # -- wallets, chain, marketplace -------------------------------------------------------
    def me(self) -> dict[str, Any]:
        return self._run(self.aio.me())

    def balance(self, address: str | None = None, chain_id: str | None = None) -> dict[str, Any]:
        return self._run(self.aio.balance(address, chain_id))

    def wallet_history(
        self,
        address: str | None = None,
        chain_id: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        *,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        return self._run(
            self.aio.wallet_history(address, chain_id, from_, to, limit=limit, offset=offset)
        )

    def faucet(
        self, amount: float, address: str | None = None, chain_id: str | None = None
    ) -> dict[str, Any]:
        return self._run(self.aio.faucet(amount, address, chain_id))

    def chains(self) -> dict[str, Any]:
        return self._run(self.aio.chains())

    def blocks(
        self, chain_id: str, from_height: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        return self._run(self.aio.blocks(chain_id, from_height, limit))

    def block(self, chain_id: str, height: int) -> dict[str, Any]:
        return self._run(self.aio.block(chain_id, height))

    def miners(
        self, model: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> dict[str, Any]:
        return self._run(self.aio.miners(model, limit, offset))

    def models(self) -> dict[str, Any]:
        return self._run(self.aio.models())

    def health(self) -> dict[str, Any]:
        return self._run(self.aio.health())
