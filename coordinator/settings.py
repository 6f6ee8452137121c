"""Coordinator settings: one frozen object from TOML, then `AIT_*` environment, then flags.

Nothing reads the environment at import time; `load_settings` is given it. Every key of
configs/coordinator.toml (SPEC §9) is here, with the same name; docs/configuration.md lists
them with their environment variables and flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROLES = ("client", "miner", "admin")
_CHAIN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class SettingsError(ValueError):
    """A bad setting; the message is one line naming the key."""


@dataclass(frozen=True)
class ChainConfig:
    id: str
    faucet: bool = False


@dataclass(frozen=True)
class RateLimit:
    per_minute: int  # 0 means unlimited
    per_hour: int


def _default_chains() -> tuple[ChainConfig, ...]:
    return (ChainConfig("ait-devnet", faucet=True), ChainConfig("ait-testnet", faucet=False))


def _default_rate_limits() -> Mapping[str, RateLimit]:
    return MappingProxyType(
        {
            "client": RateLimit(60, 1000),
            "miner": RateLimit(600, 20000),
            "admin": RateLimit(0, 0),
        }
    )


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".ait")
    db: str = ""  # empty: SQLite file in data_dir; or postgresql+asyncpg://...
    default_chain: str = "ait-devnet"
    fee_bps: int = 0
    max_body_bytes: int = 10 * 1024 * 1024
    lease_seconds: float = 30
    heartbeat_seconds: float = 5
    max_attempts: int = 3
    block_interval_seconds: float = 1
    chains: tuple[ChainConfig, ...] = field(default_factory=_default_chains)
    rate_limits: Mapping[str, RateLimit] = field(default_factory=_default_rate_limits)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL: `db`, or the SQLite file `coordinator.db` in `data_dir`."""
        if self.db:
            return self.db
        return f"sqlite+aiosqlite:///{(self.data_dir / 'coordinator.db').resolve()}"

    @property
    def key_path(self) -> Path:
        """The coordinator's Ed25519 key (signs blocks)."""
        return self.data_dir / "coordinator.key"

    def chain(self, chain_id: str) -> ChainConfig | None:
        for chain in self.chains:
            if chain.id == chain_id:
                return chain
        return None

    def rate_limit(self, role: str) -> RateLimit:
        return self.rate_limits.get(role, RateLimit(0, 0))


_SCALARS: dict[str, type] = {
    "host": str,
    "port": int,
    "data_dir": Path,
    "db": str,
    "default_chain": str,
    "fee_bps": int,
    "max_body_bytes": int,
    "lease_seconds": float,
    "heartbeat_seconds": float,
    "max_attempts": int,
    "block_interval_seconds": float,
}


def _validate(s: Settings) -> None:
    if not 0 <= s.port <= 65535:
        raise SettingsError(f"port must be 0..65535, got {s.port}")
    if not 0 <= s.fee_bps <= 10_000:
        raise SettingsError(f"fee_bps must be 0..10000, got {s.fee_bps}")
    if s.max_body_bytes < 1024:
        raise SettingsError(f"max_body_bytes must be at least 1024, got {s.max_body_bytes}")
    for name in ("lease_seconds", "heartbeat_seconds", "block_interval_seconds"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name} must be positive")
    if s.max_attempts < 1:
        raise SettingsError(f"max_attempts must be at least 1, got {s.max_attempts}")
    if s.db and not s.db.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise SettingsError("db must be empty, sqlite+aiosqlite://... or postgresql+asyncpg://...")
    if not s.chains:
        raise SettingsError("at least one [[chains]] entry is needed")
    seen: set[str] = set()
    for chain in s.chains:
        if not _CHAIN_ID_RE.fullmatch(chain.id):
            raise SettingsError(f"chain id {chain.id!r} must be lower-case letters, digits, '-'")
        if chain.id in seen:
            raise SettingsError(f"chain id {chain.id!r} is configured twice")
        seen.add(chain.id)
    if s.default_chain not in seen:
        raise SettingsError(f"default_chain {s.default_chain!r} is not one of the [[chains]]")
    for role, limit in s.rate_limits.items():
        if role not in ROLES:
            raise SettingsError(f"rate_limits.{role}: unknown role (client, miner, admin)")
        if limit.per_minute < 0 or limit.per_hour < 0:
            raise SettingsError(f"rate_limits.{role}: limits must be >= 0")


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is Path:
        if not isinstance(value, str | Path):
            raise SettingsError(f"{key} must be a path string")
        return Path(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise SettingsError(f"{key} must be a number")
        try:
            return float(value)
        except ValueError:
            raise SettingsError(f"{key} must be a number, got {value!r}") from None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SettingsError(f"{key} must be an integer")
        try:
            return int(value)
        except ValueError:
            raise SettingsError(f"{key} must be an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise SettingsError(f"{key} must be a string")
    return value


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes", "on")
    raise SettingsError(f"{key} must be true or false")


def _chains_from_toml(value: Any) -> tuple[ChainConfig, ...]:
    if not isinstance(value, list):
        raise SettingsError("chains must be an array of tables ([[chains]])")
    chains = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise SettingsError(f"chains[{i}] needs a string id")
        unknown = set(item) - {"id", "faucet"}
        if unknown:
            raise SettingsError(f"chains[{i}]: unknown key {sorted(unknown)[0]!r}")
        faucet = _parse_bool(f"chains[{i}].faucet", item.get("faucet", False))
        chains.append(ChainConfig(item["id"], faucet))
    return tuple(chains)


def _chains_from_env(text: str, source: str = "AIT_CHAINS") -> tuple[ChainConfig, ...]:
    """`AIT_CHAINS="ait-devnet:faucet,ait-testnet"` (also the `--chains` flag)."""
    chains = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        chain_id, _, flag = part.partition(":")
        if flag not in ("", "faucet"):
            raise SettingsError(f"{source}: {part!r}: the only flag is ':faucet'")
        chains.append(ChainConfig(chain_id, faucet=flag == "faucet"))
    return tuple(chains)


def _rate_limits_from_toml(value: Any, base: Mapping[str, RateLimit]) -> dict[str, RateLimit]:
    if not isinstance(value, dict):
        raise SettingsError("rate_limits must be a table")
    limits = dict(base)
    for role, table in value.items():
        if not isinstance(table, dict):
            raise SettingsError(f"rate_limits.{role} must be a table")
        unknown = set(table) - {"per_minute", "per_hour"}
        if unknown:
            raise SettingsError(f"rate_limits.{role}: unknown key {sorted(unknown)[0]!r}")
        old = limits.get(role, RateLimit(0, 0))
        limits[role] = RateLimit(
            _coerce(f"rate_limits.{role}.per_minute", table.get("per_minute", old.per_minute), int),
            _coerce(f"rate_limits.{role}.per_hour", table.get("per_hour", old.per_hour), int),
        )
    return limits


def _rate_limit_flag(text: str) -> tuple[str, RateLimit]:
    """`--rate-limit client:60:1000` (role, per minute, per hour)."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ROLES or not all(p.isdigit() for p in parts[1:]):
        raise SettingsError(f"--rate-limit {text!r}: expected ROLE:PER_MINUTE:PER_HOUR")
    return parts[0], RateLimit(int(parts[1]), int(parts[2]))


def load_settings(
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """TOML file (`config`, else `AIT_CONFIG`), then `AIT_*` env, then non-None `overrides`."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    chains: tuple[ChainConfig, ...] = _default_chains()
    limits: dict[str, RateLimit] = dict(_default_rate_limits())

    path = config if config is not None else env.get("AIT_CONFIG") or None
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config {path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            if key in _SCALARS:
                values[key] = _coerce(key, value, _SCALARS[key])
            elif key == "chains":
                chains = _chains_from_toml(value)
            elif key == "rate_limits":
                limits = _rate_limits_from_toml(value, limits)
            else:
                raise SettingsError(f"config {path}: unknown key {key!r}")

    for key, kind in _SCALARS.items():
        name = "AIT_" + key.upper()
        if name in env and env[name] != "":
            values[key] = _coerce(name, env[name], kind)
    if env.get("AIT_CHAINS"):
        chains = _chains_from_env(env["AIT_CHAINS"])
    for role in ROLES:
        for window in ("per_minute", "per_hour"):
            name = f"AIT_RATE_LIMITS_{role.upper()}_{window.upper()}"
            if env.get(name):
                old = limits.get(role, RateLimit(0, 0))
                limits[role] = dataclasses.replace(old, **{window: _coerce(name, env[name], int)})

    for key, value in (overrides or {}).items():
        if value is None or value == []:
            continue
        if key == "chains":
            chains = _chains_from_env(str(value), "--chains")
        elif key == "rate_limits":
            for item in value:
                role, limit = _rate_limit_flag(str(item))
                limits[role] = limit
        elif key in _SCALARS:
            values[key] = _coerce(key, value, _SCALARS[key])
        else:
            raise SettingsError(f"unknown setting {key!r}")

    return Settings(**values, chains=chains, rate_limits=MappingProxyType(limits))
