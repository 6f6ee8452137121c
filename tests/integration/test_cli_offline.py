"""`ait` commands that work without a coordinator (wallet create, receipt verify) and the
error paths: one line on stderr, non-zero exit, no traceback unless --debug."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from chain.receipts import build_receipt, sign_receipt
from client.cli import app
from protocol.keys import address_of, generate_private_key, load_key_file, public_key_hex


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "AIT_COORDINATOR": "",
        "AIT_API_KEY": "",
        "AIT_CONFIG": "",
        "COLUMNS": "200",
    }


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def signed_envelope() -> dict[str, Any]:
    miner_key = generate_private_key()
    receipt = build_receipt(
        job_id="job_0123456789abcdef0123",
        chain_id="ait-devnet",
        miner_address=address_of(generate_private_key()),
        client_address=address_of(generate_private_key()),
        model="echo",
        input_sha256="a" * 64,
        output_sha256="b" * 64,
        units=5,
        unit="byte",
        price_uait_per_unit=2,
        attempt=1,
        started_at="2026-01-01T00:00:00.000Z",
        completed_at="2026-01-01T00:00:01.000Z",
        public_key=public_key_hex(miner_key),
    )
    return {"receipt": receipt, "signature": sign_receipt(miner_key, receipt), "block": None}


def test_wallet_create_writes_a_private_key_file(env: dict[str, str], tmp_path: Path) -> None:
    result = invoke(env, "--json", "wallet", "create")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    key_file = Path(document["key_file"])
    assert key_file == tmp_path / "data" / "ait" / "wallet.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert address_of(load_key_file(key_file)) == document["address"]
    assert document["address"].startswith("ait1") and len(document["address"]) == 44
    again = invoke(env, "wallet", "create")
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert address_of(load_key_file(key_file)) == document["address"]  # never overwritten
    other = invoke(env, "wallet", "create", "--key-file", str(tmp_path / "k2"), "--json")
    assert other.exit_code == 0 and json.loads(other.stdout)["address"] != document["address"]


def test_receipt_verify_valid_and_tampered(env: dict[str, str], tmp_path: Path) -> None:
    envelope = signed_envelope()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(envelope))
    result = invoke(env, "receipt", "verify", str(good))
    assert result.exit_code == 0, result.stderr
    assert "valid" in result.stdout
    as_json = invoke(env, "--json", "receipt", "verify", str(good))
    assert json.loads(as_json.stdout)["valid"] is True

    envelope["receipt"]["units"] = 6
    envelope["receipt"]["cost_uait"] = 12  # consistent fields, but not what was signed
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(envelope))
    result = invoke(env, "receipt", "verify", str(bad), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert any("signature" in p for p in report["problems"])
    assert "invalid receipt" in result.stderr


def test_receipt_verify_rejects_non_json_and_missing_files(
    env: dict[str, str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("not json")
    result = invoke(env, "receipt", "verify", str(junk))
    assert result.exit_code == 1 and "not JSON" in result.stderr
    missing = invoke(env, "receipt", "verify", str(tmp_path / "nope.json"))
    assert missing.exit_code == 1
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.output


def test_config_shows_flag_over_env_over_file(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config" / "ait" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('coordinator = "http://file:1"\napi_key = "ait_from_file_123"\n')
    shown = json.loads(invoke(env, "--json", "config").stdout)
    assert shown["coordinator"] == "http://file:1" and shown["api_key"] == "ait_from..."
    assert shown["config_file"] == str(config)
    env = {**env, "AIT_COORDINATOR": "http://env:2", "AIT_CHAIN_ID": "ait-testnet"}
    shown = json.loads(invoke(env, "config", "--json").stdout)
    assert (shown["coordinator"], shown["chain_id"]) == ("http://env:2", "ait-testnet")
    shown = json.loads(invoke(env, "--coordinator", "http://flag:3", "--json", "config").stdout)
    assert shown["coordinator"] == "http://flag:3"
    assert "http://flag:3" in invoke(env, "--coordinator", "http://flag:3", "config").stdout


def test_version(env: dict[str, str]) -> None:
    result = invoke(env, "--version")
    assert result.exit_code == 0 and result.stdout.startswith("ait 0.")


def test_api_commands_need_a_key(env: dict[str, str]) -> None:
    result = invoke(env, "list")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: no API key")
    as_json = invoke(env, "--json", "list")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"]["detail"].startswith("no API key")


def test_unreachable_coordinator_is_one_line_and_debug_shows_traceback(
    env: dict[str, str],
) -> None:
    args = ["--coordinator", "http://127.0.0.1:9", "--api-key", "k", "status", "job_x"]
    result = invoke(env, *args)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "cannot reach" in result.stderr
    assert "Traceback" not in result.output
    debug = invoke(env, "--debug", *args)
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


def test_broken_config_file_is_reported(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("coordinator = [")
    result = invoke(env, "--config", str(config), "miners")
    assert result.exit_code == 1 and "config file" in result.stderr


def test_submit_needs_exactly_one_input(env: dict[str, str]) -> None:
    result = invoke(env, "--api-key", "k", "submit", "--model", "echo")
    assert result.exit_code == 2
    both = invoke(
        env, "--api-key", "k", "submit", "-m", "echo", "--input", "a", "--input-json", "1"
    )
    assert both.exit_code == 2


def _commands(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if getattr(sub, "commands", None):
            yield from _commands(sub, (*prefix, name))
        else:
            yield " ".join((*prefix, name))


def test_every_command_is_documented_and_spec_commands_exist(env: dict[str, str]) -> None:
    commands = set(_commands(typer.main.get_command(app)))
    spec = {
        "submit", "status", "list", "cancel", "download", "history", "balance",
        "wallet create", "miners", "models", "receipt verify", "chain verify",
    }  # fmt: skip
    assert spec <= commands
    docs = (Path(__file__).parents[2] / "docs" / "client.md").read_text()
    documented = set(re.findall(r"^### `ait ([a-z][a-z-]*(?: [a-z]+)?)", docs, re.MULTILINE))
    assert documented == commands
    for command in commands:
        result = invoke(env, *command.split(), "--help")
        assert result.exit_code == 0 and "--json" in result.stdout, command
