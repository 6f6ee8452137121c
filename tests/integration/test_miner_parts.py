"""Miner daemon parts without a coordinator: config precedence, URL, back-off, device probe,
key files, the echo runtime and the threaded worker (real threads, real signatures)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chain.receipts import verify_receipt
from miner.config import ConfigError, load_settings
from miner.connection import Backoff, ws_url
from miner.gpu import Device, Probe, probe
from miner.identity import load_identity, new_identity
from miner.runtime.base import JobCancelled, JobContext, JobFailed, ModelSpec
from miner.runtime.echo import RUNTIME as ECHO
from miner.worker import Worker
from protocol.canonical import sha256_hex
from protocol.keys import address_of, generate_private_key
from protocol.limits import MAX_SUMMARY_BYTES, MAX_TIMEOUT_S
from protocol.messages import Assign, Failed, Result

CONFIG = """
coordinator = "http://10.0.0.1:8000"
api_key = "from-file"
key_file = "k.json"
device = "cpu"
max_concurrency = 2

[[models]]
name = "gpt2"
runtime = "text-generation"
path = "/srv/models/gpt2"
price = 0.00002
max_new_tokens_limit = 256

[[models]]
name = "echo"
runtime = "echo"
"""


def test_config_file_env_flags_precedence(tmp_path: Path) -> None:
    path = tmp_path / "miner.toml"
    path.write_text(CONFIG)
    s = load_settings(path, env={})
    assert s.coordinator == "http://10.0.0.1:8000" and s.api_key == "from-file"
    assert s.max_concurrency == 2 and s.device == "cpu"
    gpt2, echo = s.models
    assert (gpt2.price_uait_per_unit, gpt2.unit, gpt2.options) == (
        20,
        "token",
        {"max_new_tokens_limit": 256},
    )
    assert (echo.path, echo.unit, echo.price_uait_per_unit) == (None, "byte", 0)
    env = {"AIT_API_KEY": "from-env", "AIT_MAX_CONCURRENCY": "3"}
    s = load_settings(path, env=env)
    assert (s.api_key, s.max_concurrency) == ("from-env", 3)
    s = load_settings(path, env=env, overrides={"api_key": "from-flag", "device": None})
    assert (s.api_key, s.device) == ("from-flag", "cpu")
    s = load_settings(None, env={"AIT_MINER_CONFIG": str(path)})
    assert s.api_key == "from-file"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus = 1", "unknown key 'bogus'"),
        ('device = "gpu"', "device must be"),
        ("max_concurrency = 0", "max_concurrency"),
        ('[[models]]\nname = "x"\nruntime = "nope"', "runtime must be one of"),
        ('[[models]]\nname = "x"\nruntime = "embedding"', "needs a path"),
        ('[[models]]\nname = "x"\nruntime = "echo"\nprice = 0.0000001', "more than 6 decimals"),
        ('[[models]]\nname = "x"\nruntime = "echo"\nunit = "hour"', "unit must be one of"),
        (
            '[[models]]\nname = "x"\nruntime = "echo"\n[[models]]\nname = "x"\nruntime = "echo"',
            "twice",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "miner.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings(path, env={})


def test_shipped_config_loads() -> None:
    root = Path(__file__).parents[2]
    s = load_settings(root / "configs" / "miner.toml", env={})
    assert s.coordinator == "http://127.0.0.1:8000" and s.key_file == Path(".ait/miner.key")
    assert [m.runtime for m in s.models] == ["echo"]


def test_ws_url() -> None:
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/miners/ws"
    assert ws_url("https://ait.example/") == "wss://ait.example/v1/miners/ws"
    assert ws_url("ws://h:1/v1/miners/ws") == "ws://h:1/v1/miners/ws"
    with pytest.raises(ValueError):
        ws_url("ftp://h")


def test_backoff_is_capped_exponential_with_jitter() -> None:
    b = Backoff(base_s=0.5, cap_s=30, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(40)]
    assert all(0 <= d <= 30 for d in delays)
    assert max(delays[:3]) <= 2.0  # 0.5, 1, 2 ceilings
    assert max(delays[10:]) > 10  # reaches the cap region
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next_delay() <= 0.5


def test_probe_groups_devices_and_falls_back_to_cpu() -> None:
    devs = (
        Device(0, "NVIDIA A100-SXM4-80GB", "a100-80gb", 80, 10),
        Device(1, "NVIDIA A100-SXM4-80GB", "a100-80gb", 80, 30),
        Device(2, "Tesla V100-SXM2-16GB", "v100", 16, 0),
    )
    gpus = Probe(devs, "cuda").gpus()
    assert [(g.gpu_type, g.vram_gb, g.count, g.utilisation) for g in gpus] == [
        ("a100-80gb", 80, 2, 20),
        ("v100", 16, 1, 0),
    ]
    cpu = probe("cpu")
    assert cpu.runtime_device == "cpu" and cpu.gpus()[0].gpu_type == "cpu"
    assert probe("auto").runtime_device in ("cpu", "cuda")


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "miner.key"
    first = load_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).public_key == first.public_key
    assert first.miner_id.startswith("miner_") and len(first.miner_id) == 18
    with pytest.raises(FileExistsError):
        new_identity(path)
    assert new_identity(path, overwrite=True).miner_id != first.miner_id


def _ctx(job_input: object, params: dict[str, object], tmp: Path) -> JobContext:
    return JobContext(
        job_id="job_x",
        input=job_input,
        params=params,
        device="cpu",
        work_dir=tmp,
        report_progress=lambda p, m: None,
        cancelled=threading.Event(),
    )


def test_echo_runtime(tmp_path: Path) -> None:
    spec = ModelSpec("echo", "echo", None, 1, "byte", {})
    out = ECHO.run(None, spec, _ctx({"a": [1, "é"]}, {}, tmp_path))
    assert out.output_bytes == '{"a":[1,"é"]}'.encode()
    assert out.units == len(out.output_bytes) and out.content_type == "application/json"
    raw = ECHO.run(None, spec, _ctx(b"\x00\xff", {}, tmp_path))
    assert raw.output_bytes == b"\x00\xff" and raw.filename == "output.bin"
    with pytest.raises(JobFailed, match="unknown param"):
        ECHO.run(None, spec, _ctx("x", {"sleep": 1}, tmp_path))
    with pytest.raises(JobFailed, match="boom"):
        ECHO.run(None, spec, _ctx("x", {"fail": "boom"}, tmp_path))
    with pytest.raises(JobFailed, match="delay_ms"):
        ECHO.run(None, spec, _ctx("x", {"delay_ms": 10**9}, tmp_path))
    ctx = _ctx("x", {"delay_ms": 60_000}, tmp_path)
    threading.Timer(0.1, ctx.cancelled.set).start()
    with pytest.raises(JobCancelled):
        ECHO.run(None, spec, ctx)


def _assign(text: str, **params: object) -> Assign:
    return Assign(
        job_id="job_w1",
        model="echo",
        input_kind="json",
        input_json=text,
        input_sha256=sha256_hex(text.encode()),
        chain_id="ait-devnet",
        client_address=address_of(generate_private_key()),
        attempt=1,
        price_uait_per_unit=2,
        unit="byte",
        lease_expires="2026-01-01T00:00:00.000Z",
        timeout_s=60,
        params=params,
    )


def _echo_worker(tmp_path: Path, concurrency: int = 1) -> tuple[Worker, str]:
    """A worker serving echo at 1 micro-AIT a byte, and an address to pay."""
    ident = load_identity(tmp_path / "k.json")
    spec = ModelSpec("echo", "echo", None, 1, "byte", {})
    payee = address_of(generate_private_key())
    return Worker(ident, (spec,), "cpu", tmp_path / "work", concurrency), payee


async def test_worker_signs_a_verifiable_receipt_off_the_loop(tmp_path: Path) -> None:
    ident = load_identity(tmp_path / "k.json")
    spec = ModelSpec("echo", "echo", None, 2, "byte", {})
    worker = Worker(ident, (spec,), "cpu", tmp_path / "work", 1)
    payee = address_of(generate_private_key())
    progress: list[int] = []
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    a = _assign('{"x": 1}', delay_ms=300)
    msg = await worker.start(a, lambda: payee, lambda j, p, m: progress.append(p))
    beat.cancel()
    assert ticks > 10  # the loop kept running while the job computed
    assert isinstance(msg, Result)
    assert verify_receipt(msg.receipt, msg.signature) == []
    r = msg.receipt
    assert r["job_id"] == "job_w1" and r["miner_id"] == ident.miner_id
    assert r["miner_address"] == payee and r["input_sha256"] == a.input_sha256
    assert r["output_sha256"] == sha256_hex(base64.b64decode(msg.output_b64))
    assert r["cost_uait"] == 2 * r["units"] and json.loads(msg.output_bytes()) == {"x": 1}
    assert progress and not worker.running
    worker.shutdown()


async def test_job_scratch_dirs_are_made_by_runtimes_and_removed_once_done(
    tmp_path: Path,
) -> None:
    worker, addr = _echo_worker(tmp_path)
    done = await worker.start(_assign('"x"'), lambda: addr, lambda *_: None)
    assert isinstance(done, Result)
    assert not (tmp_path / "work").exists()  # echo needs none: nothing made per job
    # A checkpointing runtime's dir goes once the result is accepted; others stay.
    kept = tmp_path / "work" / "job_other"
    kept.mkdir(parents=True)
    checkpoint = tmp_path / "work" / "job_w1" / "training-checkpoint.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"state")
    worker.discard_job_dir("job_w1")
    assert not checkpoint.parent.exists() and kept.exists()
    # The id pattern admits "." and "..": they name no dir of their own, never a parent.
    for dots in (".", ".."):
        assert worker.job_dir(dots) is None
        worker.discard_job_dir(dots)
        refused = await worker.start(
            Assign(**{**_assign('"x"').__dict__, "job_id": dots}), lambda: addr, lambda *_: None
        )
        assert isinstance(refused, Failed) and "work dir" in refused.error
    assert kept.exists() and (tmp_path / "k.json").exists()
    worker.shutdown()


async def test_worker_failures_and_cancel(tmp_path: Path) -> None:
    worker, addr = _echo_worker(tmp_path, 2)
    bad = await worker.start(_assign('"x"', fail="no"), lambda: addr, lambda *_: None)
    assert isinstance(bad, Failed) and not bad.retryable and bad.error == "no"
    tampered = _assign('"x"')
    tampered = Assign(**{**tampered.__dict__, "input_json": '"y"'})
    wrong = await worker.start(tampered, lambda: addr, lambda *_: None)
    assert isinstance(wrong, Failed) and wrong.retryable and "input_sha256" in wrong.error
    other = Assign(**{**_assign('"x"').__dict__, "model": "gpt9"})
    missing = await worker.start(other, lambda: addr, lambda *_: None)
    assert isinstance(missing, Failed) and "not served" in missing.error
    slow = worker.start(_assign('"x"', delay_ms=30_000), lambda: addr, lambda *_: None)
    await asyncio.sleep(0.1)
    assert worker.cancel("job_w1", "stop")
    assert await asyncio.wait_for(slow, 5) is None
    worker.shutdown()


async def test_a_cancelled_jobs_scratch_dir_stays_until_its_deadline_has_passed(
    tmp_path: Path,
) -> None:
    worker, addr = _echo_worker(tmp_path)
    short = Assign(**{**_assign('"x"', delay_ms=30_000).__dict__, "timeout_s": 1})
    slow = worker.start(short, lambda: addr, lambda *_: None)
    checkpoint = tmp_path / "work" / "job_w1" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"state")
    assert await worker.prune_job_dirs() == []  # running: never touched
    assert worker.cancel("job_w1", "cancelled by the client")
    assert await asyncio.wait_for(slow, 5) is None
    # Re-queued, the job could come back here and resume: the checkpoint stays...
    assert await worker.prune_job_dirs() == [] and checkpoint.exists()
    # ...until its deadline (at most timeout_s after the assignment came) has passed.
    for _ in range(50):
        if await worker.prune_job_dirs():
            break
        await asyncio.sleep(0.1)
    assert not checkpoint.parent.exists() and worker.dir_expires == {}
    worker.shutdown()


async def test_the_daemon_prunes_what_an_earlier_run_left_behind(tmp_path: Path) -> None:
    from miner.daemon import MinerDaemon

    work = tmp_path / "work"
    old = work / "job_from_last_month"
    (old / "checkpoint.pt").parent.mkdir(parents=True)
    (old / "checkpoint.pt").write_bytes(b"state")
    fresh = work / "job_from_last_hour"
    fresh.mkdir()
    long_ago = time.time() - MAX_TIMEOUT_S - 60
    for path in (old / "checkpoint.pt", old):
        os.utime(path, (long_ago, long_ago))
    # A port bound but never listened on: connecting is refused, so the daemon keeps
    # retrying, and holding it for the whole test keeps any other process off it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = tmp_path / "miner.toml"
        config.write_text(
            f'coordinator = "http://127.0.0.1:{port}"\napi_key = "k"\n'
            f'key_file = "{tmp_path / "k.json"}"\nwork_dir = "{work}"\ndevice = "cpu"\n'
            '[[models]]\nname = "echo"\nruntime = "echo"\n'
        )
        daemon = MinerDaemon(load_settings(config, env={}))
        running = asyncio.create_task(daemon.run())
        try:
            for _ in range(100):
                if not old.exists():
                    break
                await asyncio.sleep(0.05)
            assert not old.exists() and fresh.is_dir()
        finally:
            daemon.stop()
            await asyncio.wait_for(running, 10)


def test_cli_keygen_info_and_run_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from miner.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIT_API_KEY", raising=False)
    runner = CliRunner()
    key_file = tmp_path / "k" / "miner.key"
    made = runner.invoke(app, ["keygen", "--key-file", str(key_file)])
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    assert doc["miner_id"].startswith("miner_") and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = runner.invoke(app, ["keygen", "--key-file", str(key_file)])
    assert again.exit_code == 2 and "already exists" in again.output

    config = tmp_path / "miner.toml"
    config.write_text(CONFIG)
    shown = runner.invoke(
        app, ["info", "--json", "--config", str(config), "--key-file", str(key_file)]
    )
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["miner_id"] == doc["miner_id"] and info["device"] == "cpu"
    assert info["gpus"][0]["type"] == "cpu"
    assert [(m["name"], m["price_uait_per_unit"]) for m in info["models"]] == [
        ("gpt2", 20),
        ("echo", 0),
    ]
    no_key = runner.invoke(app, ["run", "--config", str(config), "--api-key", ""])
    assert no_key.exit_code == 2 and "no API key" in no_key.output
    missing = runner.invoke(app, ["run", "--config", str(config), "--api-key", "k"])
    assert missing.exit_code == 2
    assert "models[0] (gpt2): path /srv/models/gpt2 does not exist" in missing.output
    config.write_text('api_key = "k"\n')
    no_models = runner.invoke(app, ["run", "--config", str(config)])
    assert no_models.exit_code == 2 and "no [[models]]" in no_models.output
    config.write_text("device = 5\n")
    bad = runner.invoke(app, ["info", "--config", str(config)])
    assert bad.exit_code == 2 and bad.output.strip().startswith("error: device")


def test_a_result_that_does_not_fit_the_protocol_fails_the_job(tmp_path: Path) -> None:
    from miner.runtime.base import RuntimeResult
    from miner.worker import RunningJob

    worker, addr = _echo_worker(tmp_path)
    spec = worker.models["echo"]
    job = RunningJob(_assign('"x"'))
    bad = worker._result(job, spec, RuntimeResult(b"x", "text/plain", "../../etc/x", 1, {}), addr)
    assert isinstance(bad, Failed) and "filename" in bad.error and not bad.retryable
    good = worker._result(job, spec, RuntimeResult(b"x", "text/plain", "out.txt", 1, {}), addr)
    assert isinstance(good, Result) and good.output_bytes() == b"x"
    # A summary travels as JSON: other values become strings, one too large is dropped.
    odd: dict[Any, Any] = {"path": tmp_path, 3: "three", "loss": 0.25}  # a runtime's slip
    shown = worker._result(job, spec, RuntimeResult(b"x", "text/plain", "o", 1, odd), addr)
    assert isinstance(shown, Result)
    assert shown.summary == {"path": str(tmp_path), "3": "three", "loss": 0.25}
    for summary, note in (
        ({"text": "é" * (MAX_SUMMARY_BYTES // 2)}, "summary too large; dropped"),
        ({"units": 10**30}, "summary is not JSON; dropped"),  # past 64 bits: no wire form
    ):
        out = RuntimeResult(b"x", "text/plain", "o", 1, summary)
        dropped = worker._result(job, spec, out, addr)
        assert isinstance(dropped, Result) and dropped.summary == {"note": note}
    worker.shutdown()


def test_every_miner_setting_is_documented() -> None:
    import dataclasses

    from miner.config import MinerSettings

    root = Path(__file__).parents[2]
    doc = (root / "docs" / "miner.md").read_text(encoding="utf-8")
    for f in dataclasses.fields(MinerSettings):
        if f.name == "models":
            continue
        assert f"| `{f.name}` | `AIT_{f.name.upper()}` |" in doc, f.name
    for key in ("name", "runtime", "path", "price", "unit"):
        assert f"| `{key}` |" in doc, key
    for command in ("miner run", "miner keygen", "miner info"):
        assert f"`{command}" in doc, command
