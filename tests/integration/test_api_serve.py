"""`coordinator serve` as a process: prints its real URL (also with --port 0), answers,
stops cleanly on SIGTERM, and refuses bad settings with one line."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EXE = str(Path(sys.executable).parent / "coordinator")


def test_serve_port_zero_then_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            EXE,
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "d"),
            "--fee-bps",
            "7",
            "--chains",
            "x-1:faucet,y-2",
            "--default-chain",
            "x-1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"listening on (http://\S+)", line)
            url = match.group(1) if match else None
        assert url is not None and not url.endswith(":0")
        with urllib.request.urlopen(url + "/readyz", timeout=10) as resp:
            assert resp.status == 200
        assert (tmp_path / "d" / "coordinator.db").exists()
        assert (tmp_path / "d" / "coordinator.key").exists()
        made = subprocess.run(
            [EXE, "keys", "create", "--role", "client", "--data-dir", str(tmp_path / "d")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        api_key = json.loads(made.stdout)["api_key"]
        request = urllib.request.Request(
            url + "/v1/chains", headers={"Authorization": f"Bearer {api_key}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            chains = json.loads(resp.read())
        assert chains["default_chain"] == "x-1"
        assert [(c["chain_id"], c["faucet"], c["fee_bps"]) for c in chains["chains"]] == [
            ("x-1", True, 7),
            ("y-2", False, 7),
        ]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _serve_refused(*args: str) -> str:
    """`coordinator serve ARGS` must exit 1 at once; its stderr."""
    done = subprocess.run(
        [EXE, "serve", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    return done.stderr.strip()


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("fee_bps = -1\n")
    assert _serve_refused("--config", str(config)) == "error: fee_bps must be 0..10000, got -1"


def test_serve_refuses_an_unknown_log_level(tmp_path: Path) -> None:
    refusal = _serve_refused("--data-dir", str(tmp_path), "--port", "0", "--log-level", "loud")
    assert refusal == "error: unknown --log-level 'loud' (debug, info, warning, error)"


def test_a_database_from_a_newer_coordinator_is_refused_in_one_line(tmp_path: Path) -> None:
    subprocess.run(
        [EXE, "keys", "create", "--role", "client", "--data-dir", str(tmp_path)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with contextlib.closing(sqlite3.connect(tmp_path / "coordinator.db")) as db, db:
        db.execute(
            "INSERT INTO schema_version (version, name, applied_at_ms) VALUES (999, 'later', 0)"
        )
    refusal = re.compile(
        r"error: database schema version 999 is newer than this coordinator \(\d+\); "
        r"upgrade the coordinator"
    )
    assert refusal.fullmatch(_serve_refused("--data-dir", str(tmp_path), "--port", "0"))
    listed = subprocess.run(
        [EXE, "keys", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 1 and refusal.fullmatch(listed.stderr.strip())
