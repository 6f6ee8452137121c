"""A `miner run` process killed with SIGKILL mid-training: the restarted miner resumes.

The miner is started as a user starts it (config file, key in the environment), trains,
and is killed without warning. Its lease expires, the job is queued again, and the same
host (same key file, same work dir) comes back, takes the job and resumes from the
per-epoch checkpoint: the result says fewer epochs ran than were asked for.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from test_hub_flow import Stack, open_stack, until

from miner.identity import load_identity

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CONFIG = """
coordinator = "{url}"
key_file = "{dir}/miner.key"
device = "cpu"
work_dir = "{dir}/work"

[[models]]
name = "trainer"
runtime = "training"
architecture = "mlp"
price = 0.000001
"""


def _command() -> list[str]:
    script = Path(sys.executable).parent / "miner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "miner.cli"]


async def start_miner(stack: Stack, api_key: str, host: Path) -> asyncio.subprocess.Process:
    config = host / "miner.toml"
    config.write_text(CONFIG.format(url=stack.url, dir=host))
    # One compute thread: this host's cores are shared with the test and the coordinator.
    env = {**os.environ, "AIT_API_KEY": api_key, "OMP_NUM_THREADS": "1"}
    with (host / "miner.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *_command(), "run", "--config", str(config), env=env, stdout=log, stderr=log
        )


def dataset(rows: int) -> bytes:
    lines = ["x1,x2,label"]
    for i in range(rows):
        cls = i % 3
        lines.append(f"{cls + (i % 7) / 10:.2f},{cls - (i % 5) / 10:.2f},{cls}")
    return ("\n".join(lines) + "\n").encode()


async def test_sigkilled_miner_resumes_training_from_its_checkpoint(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    miner_id = load_identity(host / "miner.key").miner_id
    epochs = 30
    async with open_stack(tmp_path, lease_seconds=2, heartbeat_seconds=0.3) as stack:
        miner_key, _ = await stack.key("miner")
        client_key, _ = await stack.client(100)

        async def connected() -> bool:
            conn = stack.registry.get(miner_id)
            return conn is not None and conn.resumed

        proc = await start_miner(stack, miner_key, host)
        try:
            await until(connected, 30, "the miner to connect")
            sub = await stack.submit(
                client_key,
                model="trainer",
                input=dataset(1500).decode(),
                params={"epochs": epochs, "batch_size": 32, "learning_rate": 0.01, "seed": 2},
            )

            async def some_epochs_done() -> dict[str, Any] | None:
                job = await stack.job(client_key, sub["job_id"])
                if job["status"] not in ("queued", "running"):
                    return job  # ended early: the assertion below says how
                return job if job["progress"] >= 10 else None

            early = await until(some_epochs_done, 60, "a few epochs")
            assert early["status"] == "running", early
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), 15) == -signal.SIGKILL

            proc = await start_miner(stack, miner_key, host)  # the same host comes back
            job = await stack.wait_status(
                client_key, sub["job_id"], "completed", "failed", within_s=90
            )
        except BaseException:
            print((host / "miner.log").read_text(errors="replace"), file=sys.stderr)
            raise
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert job["status"] == "completed", job
    assert job["attempts"] == 2 and job["miner_id"] == miner_id
    summary = job["result"]["summary"]
    assert summary["resumed_from_epoch"] >= epochs // 10
    assert summary["epochs_run"] == epochs - summary["resumed_from_epoch"] < epochs
    assert summary["metrics"]["train_accuracy"] > 0.9
