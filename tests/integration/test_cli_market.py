"""Every `ait` command against a real coordinator on 127.0.0.1 (tests/conftest.py, over
SQLite and PostgreSQL) and a real in-process miner daemon (echo runtime). The CLI runs in a
worker thread (CliRunner) while the coordinator and the miner run on the test's event
loop; `--json` output is checked for SPEC §3 fields."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ait_harness import CoordinatorFactory
from typer.testing import CliRunner

from client.cli import app as ait
from miner.config import MinerSettings
from miner.daemon import MinerDaemon
from miner.runtime.base import ModelSpec

JOB_FIELDS = {
    "job_id", "status", "progress", "miner_id", "created_at", "started_at", "completed_at",
    "result", "model", "name", "estimated_cost", "cost", "error", "attempts", "chain_id",
}  # fmt: skip
PRICE_UAIT = 2  # per byte of echo output


@dataclass
class Market:
    url: str
    env: dict[str, str]
    address: str
    miner_id: str
    tmp: Path
    poor_key: str  # a client key whose address holds nothing

    async def ait(self, *args: str, key: str | None = None, stdin: str | None = None) -> Any:
        """Run `ait ARGS` in a thread (the coordinator keeps serving on this loop)."""
        env = dict(self.env)
        if key is not None:
            env["AIT_API_KEY"] = key
        return await asyncio.to_thread(CliRunner().invoke, ait, list(args), stdin, env)

    async def ait_json(self, *args: str) -> Any:
        result = await self.ait("--json", *args)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
async def market(coordinator_factory: CoordinatorFactory, tmp_path: Path) -> AsyncIterator[Market]:
    coordinator = await coordinator_factory(block_interval_seconds=0.2)
    client = await coordinator.create_key("client")
    poor = await coordinator.create_key("client")
    miner = await coordinator.create_key("miner")
    daemon = MinerDaemon(
        MinerSettings(
            coordinator=coordinator.url,
            api_key=miner.api_key,
            key_file=tmp_path / "miner.key",
            device="cpu",
            work_dir=tmp_path / "work",
            shutdown_grace_s=0,
            models=(ModelSpec("echo", "echo", None, PRICE_UAIT, "byte"),),
        )
    )
    task = asyncio.create_task(daemon.run())
    env = {
        "AIT_COORDINATOR": coordinator.url,
        "AIT_API_KEY": client.api_key,
        "AIT_CONFIG": "",
        "AIT_CHAIN_ID": "",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "COLUMNS": "250",
    }
    try:
        await asyncio.wait_for(daemon.connected.wait(), 10)
        market = Market(
            coordinator.url, env, client.address, daemon.miner_id, tmp_path, poor.api_key
        )
        await market.ait_json("faucet", "--amount", "50")
        yield market
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 10)


async def test_submit_wait_json_prints_the_finished_job_and_saves_a_valid_receipt(
    market: Market,
) -> None:
    job = await market.ait_json("submit", "--model", "echo", "--input", "hello", "--wait")
    assert job.keys() >= JOB_FIELDS
    assert job["status"] == "completed" and job["progress"] == 100
    assert job["result"] is not None and "hello" in json.dumps(job["result"])
    assert job["miner_id"] == market.miner_id
    assert job["cost"] == len(b'"hello"') * PRICE_UAIT / 1_000_000
    receipt_file = Path(job["receipt_file"])
    assert receipt_file.parent == market.tmp / "data" / "ait" / "receipts"
    verified = await market.ait("receipt", "verify", str(receipt_file))
    assert verified.exit_code == 0, verified.stderr
    envelope = json.loads(await asyncio.to_thread(receipt_file.read_text))
    envelope["receipt"]["client_address"] = "ait1" + "0" * 40
    forged = market.tmp / "forged.json"
    await asyncio.to_thread(forged.write_text, json.dumps(envelope))
    assert (await market.ait("receipt", "verify", str(forged))).exit_code == 1


async def test_submit_wait_for_people_shows_result_cost_and_receipt(market: Market) -> None:
    result = await market.ait(
        "submit", "-m", "echo", "--input-json", '{"x": [1, 2]}', "--param", "delay_ms=300",
        "--wait",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"x": [1, 2]}
    assert "receipt saved to" in result.stderr and "cost:" in result.stderr
    assert "100% completed" in result.stderr  # the progress bar's last state, on stderr


async def test_unwritable_receipt_dir_only_warns(market: Market) -> None:
    blocker = market.tmp / "not-a-dir"
    await asyncio.to_thread(blocker.write_text, "a file where the directory would go")
    market.env["AIT_RECEIPT_DIR"] = str(blocker / "receipts")
    result = await market.ait("--json", "submit", "-m", "echo", "-i", "x", "--wait")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "completed"
    assert "cannot save the receipt" in result.stderr


async def test_wait_follows_a_submitted_job(market: Market) -> None:
    accepted = await market.ait_json("submit", "-m", "echo", "-i", "later", "-p", "delay_ms=300")
    job = await market.ait_json("wait", accepted["job_id"])
    assert job["status"] == "completed" and job["result"] == "later"
    assert Path(job["receipt_file"]).name == f"{job['job_id']}.json"
    queued = await market.ait_json("submit", "-m", "no-such-model", "-i", "x")
    gave_up = await market.ait("wait", queued["job_id"], "--timeout", "0.3")
    assert gave_up.exit_code == 1 and "still queued" in gave_up.stderr
    await market.ait_json("cancel", queued["job_id"])  # also ends the server's event stream
    ended = await market.ait("wait", queued["job_id"])
    assert ended.exit_code == 1 and "ended cancelled" in ended.stderr


async def test_submit_input_from_stdin(market: Market) -> None:
    result = await market.ait("--json", "submit", "-m", "echo", "-i", "-", "-w", stdin="piped\n")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["result"] == "piped\n"


async def test_submit_wait_on_a_failing_job_exits_1_with_its_reason(market: Market) -> None:
    result = await market.ait("submit", "-m", "echo", "-i", "x", "-p", "fail=boom", "--wait")
    assert result.exit_code == 1
    assert "failed" in result.stderr and "boom" in result.stderr
    assert "Traceback" not in result.output


async def test_submit_file_then_download(market: Market) -> None:
    source = market.tmp / "input.bin"
    source.write_bytes(bytes(range(256)) * 4)
    job = await market.ait_json("submit", "-m", "echo", "--input-file", str(source), "--wait")
    assert job["status"] == "completed"
    target = market.tmp / "out.bin"
    saved = await market.ait_json("download", job["job_id"], "-o", str(target))
    assert saved == {"job_id": job["job_id"], "path": str(target), "bytes": 1024}
    assert target.read_bytes() == source.read_bytes()
    human = await market.ait("submit", "-m", "echo", "--input-file", str(source), "--wait")
    assert human.exit_code == 0, human.stderr
    assert json.loads(human.stdout)["bytes"] == 1024  # the summary; the bytes are a download
    assert "1024 bytes of application/octet-stream" in human.stderr
    assert "ait download job_" in human.stderr
    into_dir = await market.ait("download", job["job_id"], "-o", str(market.tmp))
    assert (
        into_dir.exit_code == 0 and (market.tmp / "output.bin").read_bytes() == source.read_bytes()
    )


async def test_submit_without_wait_status_list_cancel(market: Market) -> None:
    accepted = await market.ait_json(
        "submit", "-m", "no-such-model", "-i", "x", "--priority", "high", "--gpu-type", "a100",
        "--min-vram-gb", "40", "--gpu-count", "2", "--timeout-seconds", "600", "--name", "t1",
    )  # fmt: skip
    assert {"job_id", "status", "estimated_cost", "estimated_time_seconds", "chain_id"} <= set(
        accepted
    )
    job_id = accepted["job_id"]
    job = await market.ait_json("status", job_id)
    assert job.keys() >= JOB_FIELDS and job["status"] == "queued" and job["name"] == "t1"
    assert "no-such-model" in job["queue_reason"]
    assert (await market.ait_json("status"))["job_id"] == job_id  # latest
    human = await market.ait("status", job_id)
    assert human.exit_code == 0 and "queue_reason" in human.stdout

    page = await market.ait_json("list", "--status", "queued", "--limit", "5")
    assert {"jobs", "total", "has_more"} <= page.keys()
    assert [j["job_id"] for j in page["jobs"]] == [job_id]
    table = await market.ait("list")
    assert table.exit_code == 0 and job_id in table.stdout

    renamed = await market.ait_json("rename", job_id, "t2")
    assert renamed["name"] == "t2" and renamed.keys() >= JOB_FIELDS
    assert "t2" in (await market.ait("rename", job_id, "t2")).stdout
    cancelled = await market.ait_json("cancel", job_id)
    assert cancelled["status"] == "cancelled"
    again = await market.ait("cancel", job_id)
    assert again.exit_code == 1 and "409" in again.stderr
    assert again.stderr.count("\n") == 1


async def test_history_with_totals(market: Market) -> None:
    done = await market.ait_json("submit", "-m", "echo", "-i", "abc", "--wait")
    report = await market.ait_json("history", "--from", "2000-01-01", "--to", "2999-12-31")
    assert report["count"] == 1 and report["total_cost"] == done["cost"]
    assert [j["job_id"] for j in report["jobs"]] == [done["job_id"]]
    table = await market.ait("history")
    assert table.exit_code == 0 and done["job_id"] in table.stdout and "total cost" in table.stdout
    bad = await market.ait("history", "--from", "yesterday")
    assert bad.exit_code == 1 and "422" in bad.stderr


async def test_balance_me_faucet_and_wallet_history(market: Market) -> None:
    me = await market.ait_json("me")
    assert me["address"] == market.address and me["role"] == "client" and me["key_id"]
    balance = await market.ait_json("balance")
    assert balance == {**balance, "address": market.address, "chain_id": "ait-devnet"}
    assert (balance["balance"], balance["held"], balance["available"]) == (50, 0, 50)
    human = await market.ait("balance", "--chain-id", "ait-testnet")
    assert human.exit_code == 0 and "ait-testnet" in human.stdout
    refused = await market.ait("faucet", "--chain-id", "ait-testnet")
    assert refused.exit_code == 1 and "faucet" in refused.stderr
    history = await market.ait_json("wallet", "history")
    assert history["total"] == 1 and history["entries"][0]["amount"] == 50


async def test_miners_and_models(market: Market) -> None:
    miners = await market.ait_json("miners")
    (miner,) = miners["miners"]
    assert miner["miner_id"] == market.miner_id
    assert {"gpus", "models", "status", "jobs_completed", "reputation"} <= miner.keys()
    table = await market.ait("miners")
    assert table.exit_code == 0 and market.miner_id in table.stdout and "echo" in table.stdout
    assert (await market.ait_json("miners", "--model", "echo")) == miners
    assert (await market.ait_json("miners", "--model", "gpt2")) == {"miners": []}
    models = await market.ait_json("models")
    assert [m["model"] for m in models["models"]] == ["echo"]
    assert models["models"][0]["miners_online"] == 1
    assert "echo" in (await market.ait("models")).stdout


async def test_chain_verify_after_settlement(market: Market) -> None:
    await market.ait_json("submit", "-m", "echo", "-i", "settle me", "--wait")
    report: dict[str, Any] = {}
    for _ in range(50):  # the sealer writes the settlement within block_interval_seconds
        report = await market.ait_json("chain", "verify")
        if report["entries"] >= 3:  # mint, hold, pay (+ refund of the rest)
            break
        await asyncio.sleep(0.2)
    assert report["ok"] is True and report["failures"] == []
    assert report["balances_compared"] >= 2 and report["minted_uait"] == 50_000_000
    human = await market.ait("chain", "verify", "--chain-id", "ait-devnet")
    assert human.exit_code == 0 and "verified" in human.stdout
    forged = await market.ait("chain", "verify", "--public-key", "11" * 32)
    assert forged.exit_code == 1 and "signature" in forged.stderr


async def test_api_errors_are_one_line(market: Market) -> None:
    missing = await market.ait("status", "job_00000000000000000000")
    assert missing.exit_code == 1 and "404" in missing.stderr
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.output
    as_json = await market.ait("status", "job_00000000000000000000", "--json")
    assert as_json.exit_code == 1 and as_json.stderr.count("\n") == 1
    problem = json.loads(as_json.stdout)["error"]
    assert problem["status"] == 404 and problem["type"] == "not-found" and problem["detail"]
    bad_key = await market.ait("list", key="ait_not-a-key")
    assert bad_key.exit_code == 1 and "401" in bad_key.stderr
    poor = await market.ait("submit", "-m", "echo", "-i", "x" * 100, key=market.poor_key)
    assert poor.exit_code == 1 and "402" in poor.stderr


async def test_submit_batch_from_a_json_lines_file(market: Market) -> None:
    lines = [json.dumps({"model": "echo", "input": {"n": n}, "name": f"j{n}"}) for n in range(3)]
    path = market.tmp / "jobs.jsonl"
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    answer = await market.ait_json("submit-batch", str(path))
    ids = [job["job_id"] for job in answer["jobs"]]
    assert len(ids) == 3 and all(job["status"] == "queued" for job in answer["jobs"])
    for job_id, n in zip(ids, range(3), strict=True):
        done = await market.ait_json("wait", job_id)
        assert done["status"] == "completed" and done["result"] == {"n": n}
        assert done["name"] == f"j{n}"
    people = await market.ait("submit-batch", "-", stdin=lines[0] + "\n")
    assert people.exit_code == 0 and " queued: estimated cost " in people.stdout


async def test_submit_batch_bad_lines_are_named_and_nothing_is_lost(market: Market) -> None:
    path = market.tmp / "jobs.jsonl"
    path.write_text('{"model": "echo", "input": 1}\n[1, 2]\n')
    result = await market.ait("submit-batch", str(path))
    assert result.exit_code == 1 and f"{path}:2: a job must be a JSON object" in result.stderr
    path.write_text('{"model": "echo", "input": 1}\n{"model": "", "input": 2}\n')
    result = await market.ait("submit-batch", str(path))
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "lines 1-2 refused: line 2: model:" in result.stderr
    assert "nothing was submitted" in result.stderr
    listed = await market.ait_json("list")
    assert listed["total"] == 0

    # 101 jobs: the first request (lines 1-100) goes through, the second is refused; the
    # error lists what was submitted, so a retry sends only the rest.
    good = json.dumps({"model": "echo", "input": "x"})
    path.write_text("\n".join([good] * 100 + ['{"model": "echo"}']) + "\n")
    result = await market.ait("--json", "submit-batch", str(path))
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["status"] == 422 and "lines 101-101 refused: line 101: input:" in error["detail"]
    assert len(error["submitted"]) == 100
    listed = await market.ait_json("list", "--limit", "100")
    assert listed["total"] == 100
