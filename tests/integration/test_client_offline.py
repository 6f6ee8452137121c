"""Client parts that need no coordinator: SSE parsing, error mapping, settings, back-off,
and the retry loop against a scripted HTTP peer (it stands in for a proxy or an
overloaded server answering 429/503, which a healthy coordinator cannot be made to do
on demand)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from client import errors
from client.cli_common import parse_param
from client.config import ConfigError, resolve
from client.sdk import MAX_BACKOFF_S, CoordinatorClient, backoff_s
from client.sse import SseParser


def feed(parser: SseParser, text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines(keepends=True):
        event = parser.feed_line(line.encode())
        if event is not None:
            out.append((event.event, event.data))
    return out


def test_sse_parser_events_comments_and_multiline_data() -> None:
    text = (
        ": keep-alive\n\n"
        'event: status\ndata: {"status": "running"}\n\n'
        "data: line one\r\ndata: line two\r\n\r\n"
        "id: 7\nretry: 100\n"
    )
    assert feed(SseParser(), text) == [
        ("status", '{"status": "running"}'),
        ("message", "line one\nline two"),
    ]


def test_errors_map_status_and_problem_type() -> None:
    problem = {"type": "insufficient-funds", "title": "Insufficient funds", "detail": "need 1"}
    err = errors.error_from_response(402, problem)
    assert isinstance(err, errors.InsufficientFunds)
    assert str(err) == "402 Insufficient funds: need 1"
    faucet = errors.error_from_response(403, {"type": "faucet-disabled", "detail": "no"})
    assert isinstance(faucet, errors.FaucetDisabled) and isinstance(faucet, errors.Forbidden)
    bad = errors.error_from_response(
        422, {"type": "validation-failed", "errors": [{"field": "model", "detail": "missing"}]}
    )
    assert isinstance(bad, errors.ValidationFailed)
    assert bad.errors == [{"field": "model", "detail": "missing"}]
    limited = errors.error_from_response(429, {}, {"Retry-After": "3"})
    assert isinstance(limited, errors.RateLimited) and limited.retry_after == 3.0
    html = errors.error_from_response(502, b"<html>bad gateway</html>")
    assert isinstance(html, errors.ServerError) and "bad gateway" in html.detail
    assert type(errors.error_from_response(418, {})) is errors.ApiError


def test_backoff_honours_retry_after_and_caps() -> None:
    assert backoff_s(0, 2.0) == 2.0
    assert backoff_s(0, 3600.0) == MAX_BACKOFF_S
    assert 0.4 <= backoff_s(0, None) <= 0.6
    assert backoff_s(50, None) <= MAX_BACKOFF_S * 1.2


def test_param_values_are_json_when_they_parse() -> None:
    assert parse_param("n=3") == ("n", 3)
    assert parse_param("t=0.5") == ("t", 0.5)
    assert parse_param('h={"epochs": 2}') == ("h", {"epochs": 2})
    assert parse_param("style=chat") == ("style", "chat")
    assert parse_param("eq=a=b") == ("eq", "a=b")


def test_settings_precedence_flag_env_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('coordinator = "http://file:1"\napi_key = "file-key"\nchain_id = "c1"\n')
    env = {"AIT_COORDINATOR": "http://env:2", "XDG_DATA_HOME": str(tmp_path / "data")}
    s = resolve(env=env, config=config)
    assert (s.coordinator, s.api_key, s.chain_id) == ("http://env:2", "file-key", "c1")
    s = resolve(env=env, config=config, coordinator="http://flag:3", api_key="flag-key")
    assert (s.coordinator, s.api_key) == ("http://flag:3", "flag-key")
    assert s.receipt_dir == tmp_path / "data" / "ait" / "receipts"


def test_config_file_follows_xdg_and_rejects_typos(tmp_path: Path) -> None:
    (tmp_path / "ait").mkdir()
    (tmp_path / "ait" / "config.toml").write_text('api_kee = "x"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        resolve(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert resolve(env={"XDG_CONFIG_HOME": str(tmp_path / "none")}).api_key is None


@pytest.fixture
async def flaky_server() -> AsyncIterator[tuple[str, list[float]]]:
    """Answers 503 (Retry-After: 0), then 429 (Retry-After: 1), then 200; records times."""
    seen: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        problem = {"type": "x", "title": "busy", "status": 0, "detail": "try later"}
        if len(seen) == 1:
            return web.json_response(
                {**problem, "status": 503}, status=503, headers={"Retry-After": "0"}
            )
        if len(seen) == 2:
            return web.json_response(
                {**problem, "status": 429}, status=429, headers={"Retry-After": "1"}
            )
        return web.json_response({"address": "ait1" + "0" * 40, "role": "client", "key_id": "k"})

    app = web.Application()
    app.router.add_get("/v1/me", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_retries_429_and_503_honouring_retry_after(
    flaky_server: tuple[str, list[float]],
) -> None:
    url, seen = flaky_server
    async with CoordinatorClient(url, "key", max_retries=3) as client:
        assert (await client.me())["role"] == "client"
    assert len(seen) == 3
    assert seen[2] - seen[1] >= 0.95  # waited the 429's Retry-After


async def test_gives_up_after_max_retries(flaky_server: tuple[str, list[float]]) -> None:
    url, seen = flaky_server
    async with CoordinatorClient(url, "key", max_retries=0) as client:
        with pytest.raises(errors.ServerError) as info:
            await client.me()
    assert info.value.status == 503 and len(seen) == 1


async def test_unreachable_coordinator_is_connection_failed(tmp_path: Path) -> None:
    server = web.AppRunner(web.Application())
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    port = server.addresses[0][1]
    await server.cleanup()  # the port is now closed
    async with CoordinatorClient(f"http://127.0.0.1:{port}", "key", timeout=2) as client:
        with pytest.raises(errors.ConnectionFailed, match="cannot reach"):
            await client.me()


@pytest.fixture
async def no_events_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A peer whose event stream is broken (500): `wait` must fall back to polling."""
    calls: list[str] = []

    async def job(request: web.Request) -> web.Response:
        calls.append("job")
        status = "completed" if calls.count("job") >= 3 else "running"
        return web.json_response({"job_id": request.match_info["job_id"], "status": status})

    async def events(request: web.Request) -> web.Response:
        calls.append("events")
        return web.json_response({"title": "boom", "detail": "broken"}, status=500)

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}", job)
    app.router.add_get("/v1/jobs/{job_id}/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", calls
    finally:
        await runner.cleanup()


async def test_wait_polls_when_the_event_stream_is_broken(
    no_events_server: tuple[str, list[str]],
) -> None:
    url, calls = no_events_server
    seen: list[dict[str, object]] = []
    async with CoordinatorClient(url, "key", max_retries=0) as client:
        job = await client.wait("job_1", on_event=seen.append, poll_interval=0.05, timeout_s=10)
    assert job["status"] == "completed"
    assert calls == ["job", "events", "job", "events", "job"]
    assert [e["status"] for e in seen] == ["running", "running"]


async def test_wait_rides_out_a_short_coordinator_outage() -> None:
    """running, then two 502s from a proxy in front of a restarting coordinator, then done."""
    answers = [200, 502, 502, 200]
    calls: list[int] = []

    async def job(request: web.Request) -> web.Response:
        status = answers[min(len(calls), len(answers) - 1)]
        calls.append(status)
        if status != 200:
            return web.Response(status=status, text="<html>bad gateway</html>")
        done = len(calls) == len(answers)
        body = {"job_id": "job_1", "status": "completed" if done else "running"}
        return web.json_response(body)

    async def events(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}", job)
    app.router.add_get("/v1/jobs/{job_id}/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with CoordinatorClient(url, "key", max_retries=0) as client:
            done = await client.wait("job_1", poll_interval=0.05, timeout_s=20)
    finally:
        await runner.cleanup()
    assert done["status"] == "completed" and calls == answers
