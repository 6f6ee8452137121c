"""`protocol.eventloop.run`, which both daemons' entry points call, runs its coroutine on
uvloop where it is installed (a dependency off Windows), else on asyncio's own loop."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from protocol import eventloop


def _loop_type_seen() -> type:
    seen: list[type] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()))

    eventloop.run(main())
    return seen[0]


def test_runs_on_uvloop_when_installed() -> None:
    assert issubclass(_loop_type_seen(), uvloop.Loop)


def test_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    loop_type = _loop_type_seen()
    assert not issubclass(loop_type, uvloop.Loop)
    assert issubclass(loop_type, asyncio.AbstractEventLoop)
