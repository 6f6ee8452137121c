"""Settings precedence (file < environment < flags), their checks, and docs that cover every
setting and every route."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from coordinator.app import create_app
from coordinator.settings import ChainConfig, RateLimit, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_shipped_config() -> None:
    shipped = load_settings(ROOT / "configs" / "coordinator.toml", env={})
    assert shipped == Settings()
    assert shipped.db_url.startswith("sqlite+aiosqlite:///") and shipped.db_url.endswith(
        ".ait/coordinator.db"
    )


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'port = 9000\nfee_bps = 10\nhost = "0.0.0.0"\n'
        '[[chains]]\nid = "ait-devnet"\nfaucet = false\n'
        "[rate_limits.client]\nper_minute = 5\n"
    )
    env = {"AIT_PORT": "9100", "AIT_FEE_BPS": "20", "AIT_RATE_LIMITS_CLIENT_PER_HOUR": "50"}
    s = load_settings(config, env=env, overrides={"port": 9200, "host": None})
    assert (s.port, s.fee_bps, s.host) == (9200, 20, "0.0.0.0")
    assert s.chains == (ChainConfig("ait-devnet", False),)
    assert s.rate_limit("client") == RateLimit(5, 50)
    assert s.rate_limit("miner") == RateLimit(600, 20000)
    via_env = load_settings(env={"AIT_CONFIG": str(config)})
    assert via_env.port == 9000
    chains = load_settings(env={"AIT_CHAINS": "a-1:faucet,b-2", "AIT_DEFAULT_CHAIN": "b-2"})
    assert chains.chains == (ChainConfig("a-1", True), ChainConfig("b-2", False))
    flags = load_settings(
        env={"AIT_CHAINS": "a-1"},
        overrides={
            "chains": "z-9:faucet",
            "default_chain": "z-9",
            "rate_limits": ["client:1:2", "admin:3:0"],
        },
    )
    assert flags.chains == (ChainConfig("z-9", True),)
    assert flags.rate_limit("client") == RateLimit(1, 2)
    assert flags.rate_limit("admin") == RateLimit(3, 0)
    with pytest.raises(SettingsError, match="--rate-limit"):
        load_settings(env={}, overrides={"rate_limits": ["client:x"]})


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("colour = 1", {}, "unknown key 'colour'"),
        ("port = 'x'", {}, "port must be an integer"),
        ("fee_bps = 20000", {}, "fee_bps must be 0..10000"),
        ("[[chains]]\nid = 'A B'", {}, "chain id"),
        ("default_chain = 'nope'", {}, "default_chain"),
        ("[rate_limits.guest]\nper_minute = 1", {}, "unknown role"),
        ("db = 'mysql://x'", {}, "db must be"),
        ("port = [", {}, "not valid TOML"),
        ("", {"AIT_LEASE_SECONDS": "soon"}, "AIT_LEASE_SECONDS must be a number"),
        ("", {"AIT_MAX_ATTEMPTS": "0"}, "max_attempts"),
        ("", {"AIT_CHAINS": "x:fast"}, "AIT_CHAINS"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(config, env=env)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config"):
        load_settings(tmp_path / "missing.toml", env={})


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for f in dataclasses.fields(Settings):
        assert f"`{f.name}" in doc, f.name
        if f.name not in ("chains", "rate_limits"):
            assert f"AIT_{f.name.upper()}" in doc, f.name
            assert "--" + f.name.replace("_", "-") in doc, f.name


def test_every_route_is_documented(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    doc = (ROOT / "docs" / "api.md").read_text()
    for resource in app.router.resources():
        path = resource.canonical
        if path == "/v1/miners/ws":
            continue  # docs/protocol.md
        assert path in doc or path.rsplit("/", 1)[-1] in doc, path
