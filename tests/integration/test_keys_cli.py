"""`coordinator keys create|list|revoke` against the database of a running coordinator:
a key made by the CLI works at once; a revoked one answers 401 at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
from ait_harness import Coordinator
from api_helpers import call
from typer.testing import CliRunner

from coordinator.cli import app

runner = CliRunner()


async def cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it runs its own event loop)."""
    result = await asyncio.to_thread(runner.invoke, app, list(args))
    return result.exit_code, result.stdout, result.stderr


async def test_create_use_list_revoke(
    coordinator: Coordinator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    common = ["--db", coordinator.settings.db_url, "--data-dir", str(tmp_path / "cli")]
    code, out, _ = await cli("keys", "create", "--role", "client", "--name", "alice", *common)
    assert code == 0, out
    made = json.loads(out)
    assert made["role"] == "client" and made["address"].startswith("ait1")
    assert made["api_key"].startswith("ait_") and made["key_id"].startswith("key_")
    assert await asyncio.to_thread(os.path.exists, made["wallet_key_file"])
    headers = {"Authorization": f"Bearer {made['api_key']}"}
    status, me, _ = await call(http, "GET", coordinator.url + "/v1/me", headers=headers)
    assert status == 200 and me["address"] == made["address"] and me["key_id"] == made["key_id"]

    bound = "ait1" + "c" * 40
    code, out, _ = await cli("keys", "create", "--role", "miner", "--address", bound, *common)
    assert code == 0 and json.loads(out)["address"] == bound

    code, out, _ = await cli("keys", "list", "--json", *common)
    listed = {k["key_id"]: k for k in json.loads(out)["keys"]}
    assert (
        listed[made["key_id"]]["name"] == "alice" and listed[made["key_id"]]["revoked_at"] is None
    )
    assert made["api_key"] not in out  # stored hashed, never shown again

    code, out, _ = await cli("keys", "revoke", made["key_id"], *common)
    assert code == 0 and json.loads(out)["revoked_at"]
    status, _, _ = await call(http, "GET", coordinator.url + "/v1/me", headers=headers)
    assert status == 401
    code, out, _ = await cli("keys", "list", *common)
    assert "revoked" in out


async def test_cli_errors_are_one_line(coordinator: Coordinator, tmp_path: Path) -> None:
    common = ["--db", coordinator.settings.db_url, "--data-dir", str(tmp_path)]
    for args in (
        ["keys", "create", "--role", "wizard", *common],
        ["keys", "create", "--role", "client", "--address", "nope", *common],
        ["keys", "revoke", "key_missing", *common],
        ["keys", "list", "--db", "mysql://x"],
    ):
        code, out, err = await cli(*args)
        assert code == 1, (args, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_installed_command_prints_one_json_object(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    exe = Path(sys.executable).parent / "coordinator"
    done = subprocess.run(
        [str(exe), "keys", "create", "--role", "admin", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["role"] == "admin" and (tmp_path / "data" / "coordinator.db").exists()
