"""The Python snippets of docs/client.md run against a real coordinator and echo miner."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ait_harness import CoordinatorFactory

from miner.config import MinerSettings
from miner.daemon import MinerDaemon
from miner.runtime.base import ModelSpec

DOC = Path(__file__).parents[2] / "docs" / "client.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


@pytest.fixture
async def live(
    coordinator_factory: CoordinatorFactory, tmp_path: Path
) -> AsyncIterator[tuple[str, str]]:
    coordinator = await coordinator_factory()
    client = await coordinator.create_key("client")
    await coordinator.fund(client.address, 10)
    miner = await coordinator.create_key("miner")
    daemon = MinerDaemon(
        MinerSettings(
            coordinator=coordinator.url,
            api_key=miner.api_key,
            key_file=tmp_path / "miner.key",
            device="cpu",
            work_dir=tmp_path / "work",
            models=(ModelSpec("echo", "echo", None, 1, "byte"),),
        )
    )
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.connected.wait(), 10)
        yield coordinator.url, client.api_key
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)


def _run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_snippet__"})
    return out.getvalue()


async def test_docs_snippets_run(
    live: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key = live
    monkeypatch.chdir(tmp_path)
    codes = snippets()
    assert len(codes) == 2
    outputs = []
    for code in codes:
        code = code.replace("http://127.0.0.1:8000", url).replace('"ait_..."', repr(key))
        outputs.append(await asyncio.to_thread(_run, code))
    assert "Hello" in outputs[0] and "completed" in outputs[0]
    assert (tmp_path / "out.json").read_text() == '"Hello"'
    assert "'type': 'end'" in outputs[1]
