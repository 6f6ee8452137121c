"""Schemathesis against `/v1/openapi.json` of a real `coordinator serve` process with an
echo miner connected (SPEC §3): coverage, fuzzing and stateful phases (jobs are created,
read, renamed, cancelled, downloaded through the schema's links), positive and negative
data. Every response: never a 5xx, a documented status code and content type, a body that
matches the schema, auth never ignored. The coordinator's own /metrics counts the
requests it answered (at least 2,000) and confirms no 5xx from its side.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from reliability_cluster import BIN, Api, Cluster, record, soak, wait_for

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
pytest.importorskip("schemathesis", reason="pip install schemathesis==4.32.5 (the dev extra)")

# The checks, every one on for every operation: a disagreement between the schema and the
# server fails the test (docs/reliability.md, "Findings"). (Per-operation settings would
# live in the config file: `--checks` on the command line would override them.)
CONFIG = """
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
response_headers_conformance.enabled = true
ignored_auth.enabled = true
"""
_REQUESTS = re.compile(r"^ait_http_requests_total\{([^}]*)\} (\d+)$", re.MULTILINE)


async def _served(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """(requests answered, of which 5xx) from the coordinator's /metrics."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    total = errors = 0
    for labels, count in _REQUESTS.findall(text):
        total += int(count)
        if 'status="5' in labels:
            errors += int(count)
    return total, errors


async def test_schemathesis_finds_no_server_error_and_no_schema_drift(
    make_cluster: Callable[..., Cluster], db_url: str, tmp_path: Path
) -> None:
    """SQLite gets the full run (>= 2,000 requests); PostgreSQL a shorter one, which is
    where strings the database cannot store (NUL) would surface as 5xx."""
    postgres = db_url.startswith("postgresql")
    examples = 400 if soak() else (40 if postgres else 140)
    least = 800 if postgres and not soak() else 2000
    cluster = make_cluster("fuzz", db_url, lease_seconds=5.0, heartbeat_seconds=1.0)
    admin_key, miner_key = await cluster.create_keys("admin", "miner")
    cluster.start_coordinator()
    await cluster.wait_healthy()
    cluster.start_miner(0, miner_key["api_key"], concurrency=4)
    async with aiohttp.ClientSession() as session:
        admin = Api(session, cluster.url, admin_key["api_key"])
        for _ in range(3):  # the fuzzer submits jobs; give its address money
            await admin.ok("POST", "/v1/faucet", {"address": admin_key["address"], "amount": 1000})

        async def miner_up() -> bool:
            return await admin.connected_miners() >= 1

        await wait_for(miner_up, 60, "the echo miner to connect")
        before, _ = await _served(session, cluster.url)

        workdir = tmp_path / "st"
        workdir.mkdir()
        (workdir / "schemathesis.toml").write_text(CONFIG)
        command = [
            str(BIN / "st"),
            "run",
            cluster.url + "/v1/openapi.json",
            *("-H", f"Authorization: Bearer {admin_key['api_key']}"),
            *("--max-examples", str(examples)),
            # one worker: with two, CPython 3.11's ast.parse (Hypothesis describing a filter
            # lambda) intermittently raised "AST constructor recursion depth mismatch"
            *("--workers", "1"),
            *("--request-timeout", "10"),
            # The event stream of a job that stays queued (requirements no miner meets)
            # lasts until the job's timeout, and its keep-alives beat the read timeout, so
            # the fuzzer would wait on it for hours. Its schema is checked against every
            # event of a real job in tests/integration/test_api_schema.py.
            *("--exclude-path-regex", "/events$"),
            *("--generation-database", "none"),
            *("--report", "json", "--report-json-path", str(workdir / "report.json")),
            "--no-color",
        ]
        done = await asyncio.to_thread(
            subprocess.run, command, cwd=workdir, capture_output=True, text=True, timeout=540
        )
        after, server_errors = await _served(session, cluster.url)
    (workdir / "st-output.txt").write_text(done.stdout + done.stderr)
    report = json.loads((workdir / "report.json").read_text())
    output = done.stdout[-8000:] + done.stderr[-2000:]
    assert report["failures"] == [], output
    assert report["errors"] == [], output
    assert done.returncode == 0, output
    assert server_errors == 0, f"/metrics counts {server_errors} responses 5xx"
    requests = after - before
    assert requests >= least, f"only {requests} requests were made"
    assert cluster.coordinator is not None and cluster.coordinator.poll() is None
    record(
        f"schemathesis[{'postgresql' if postgres else 'sqlite'}]",
        {
            "schemathesis": report["schemathesis_version"],
            "test_cases": report["test_cases"]["generated"],
            "requests_answered": requests,
            "responses_5xx": server_errors,
            "failures": len(report["failures"]),
            "operations_tested": report["operations"]["tested"],
            "seed": report["seed"],
            "warnings": {k: v for k, v in report["warnings"].items() if v},
        },
    )
