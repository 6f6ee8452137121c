"""The layering of docs/architecture.md, checked in fresh interpreters.

Pure modules import no I/O library; the coordinator and the client never import torch
(a coordinator host needs no PyTorch, and importing it would cost seconds and GiBs).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

IO_LIBRARIES = ("aiohttp", "websockets", "sqlalchemy", "torch", "asyncpg", "aiosqlite")


def _loaded_after(imports: str, forbidden: tuple[str, ...]) -> list[str]:
    code = f"import sys\n{imports}\nprint(','.join(m for m in {forbidden!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return [name for name in done.stdout.strip().split(",") if name]


@pytest.mark.parametrize(
    "module",
    [
        "protocol.canonical",
        "protocol.keys",
        "protocol.money",
        "protocol.ids",
        "protocol.timefmt",
        "protocol.messages",
        "chain.receipts",
        "chain.ledger",
        "chain.merkle",
        "chain.blocks",
        "chain.verify",
        "coordinator.domain.matching",
        "coordinator.domain.pricing",
        "coordinator.domain.jobs",
    ],
)
def test_pure_modules_import_no_io_library(module: str) -> None:
    assert _loaded_after(f"import {module}", IO_LIBRARIES) == []


def test_coordinator_and_client_never_import_torch() -> None:
    imports = "import coordinator.app, coordinator.cli, client.cli, client.sdk"
    assert _loaded_after(imports, ("torch", "transformers", "sentence_transformers")) == []


def test_miner_imports_torch_only_when_a_runtime_needs_it() -> None:
    imports = "import miner.cli, miner.runtime.base, miner.runtime.registry"
    assert _loaded_after(imports, ("torch",)) == []
