"""The installed `ait` as a user runs it: a `coordinator serve` process, a `miner run`
process (echo runtime) and `ait submit --wait` as subprocesses on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

BIN = Path(sys.executable).parent
STARTUP_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _get_json(url: str, key: str | None = None) -> Any:
    request = urllib.request.Request(url, headers={"X-Api-Key": key} if key else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def _wait_for(what: str, check: Any, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{what} not ready after {STARTUP_S} s: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class Processes:
    url: str
    env: dict[str, str]  # for `ait`: coordinator, client key, XDG dirs
    home: Path


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """One coordinator and one miner process for the module (they take seconds to start)."""
    tmp_path = tmp_path_factory.mktemp("ait-e2e")
    data_dir, port = tmp_path / "coordinator", _free_port()
    url = f"http://127.0.0.1:{port}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIT_")}
    keys = {}
    for role in ("client", "miner"):
        made = _run("coordinator", "keys", "create", "--role", role, "--data-dir", str(data_dir),
                    env=base_env)  # fmt: skip
        assert made.returncode == 0, made.stderr
        keys[role] = json.loads(made.stdout)["api_key"]
    (tmp_path / "miner.toml").write_text(
        f'coordinator = "{url}"\nkey_file = "{tmp_path / "miner.key"}"\ndevice = "cpu"\n'
        f'work_dir = "{tmp_path / "work"}"\n'
        '[[models]]\nname = "echo"\nruntime = "echo"\nprice = 0.000001\n'
    )
    logs: list[IO[str]] = []
    started: list[subprocess.Popen[str]] = []

    def start(log_name: str, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
        log = (tmp_path / log_name).open("w")
        logs.append(log)
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], env=env, stdout=log, stderr=subprocess.STDOUT,
            text=True, cwd=tmp_path,
        )  # fmt: skip
        started.append(process)
        return process

    try:
        coordinator = start(
            "coordinator.log", "coordinator", "serve", "--port", str(port),
            "--data-dir", str(data_dir), env=base_env,
        )  # fmt: skip
        _wait_for("coordinator", lambda: _get_json(f"{url}/healthz")["status"] == "ok",
                  coordinator, tmp_path / "coordinator.log")  # fmt: skip
        miner = start(
            "miner.log", "miner", "run", "--config", str(tmp_path / "miner.toml"),
            env={**base_env, "AIT_API_KEY": keys["miner"]},
        )  # fmt: skip
        _wait_for("miner", lambda: _get_json(f"{url}/v1/miners", keys["client"])["miners"],
                  miner, tmp_path / "miner.log")  # fmt: skip
        env = {
            **base_env,
            "AIT_COORDINATOR": url,
            "AIT_API_KEY": keys["client"],
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_DATA_HOME": str(tmp_path / "data"),
        }
        funded = _run("ait", "faucet", "--amount", "5", env=env)
        assert funded.returncode == 0, funded.stderr
        yield Processes(url, env, tmp_path)
    finally:
        for process in reversed(started):
            _stop(process)
        for log in logs:
            log.close()


def test_ait_submit_wait_prints_the_result_and_exits_0(processes: Processes) -> None:
    done = _run("ait", "submit", "--model", "echo", "--input", "hello e2e", "--wait",
                env=processes.env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello e2e"
    assert "cost: 0.000011 AIT" in done.stderr  # 11 bytes of '"hello e2e"' at 1 uAIT/byte
    saved = re.search(r"receipt saved to (\S+\.json)", done.stderr)
    assert saved is not None, done.stderr
    receipt = Path(saved.group(1))
    assert receipt.parent == processes.home / "data" / "ait" / "receipts"
    verified = _run("ait", "receipt", "verify", str(receipt), env=processes.env)
    assert verified.returncode == 0, verified.stderr
    # The daemons' log lines name the job (and the miner) they are about.
    job_id = receipt.stem  # saved as <job_id>.json
    coordinator_log = (processes.home / "coordinator.log").read_text()
    assert re.search(rf"job assigned job_id={job_id} miner_id=miner_\w+ attempt=1", coordinator_log)
    assert re.search(rf"job completed job_id={job_id} miner_id=miner_\w+", coordinator_log)
    assert f"job assigned job_id={job_id}" in (processes.home / "miner.log").read_text()


def test_ait_submit_wait_json_is_the_finished_job(processes: Processes) -> None:
    done = _run("ait", "--json", "submit", "-m", "echo", "--input-json", '{"n": 1}', "--wait",
                env=processes.env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "completed" and job["result"] is not None
    assert job["cost"] == 0.000007 and job["attempts"] == 1
    failed = _run("ait", "--json", "submit", "-m", "echo", "-i", "x", "-p", "fail=on purpose",
                  "--wait", env=processes.env)  # fmt: skip
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "failed"
    assert "on purpose" in failed.stderr and "Traceback" not in failed.stderr
