"""Settings of the `ait` CLI: flags, then environment (`AIT_*`), then the config file.

The config file is `$XDG_CONFIG_HOME/ait/config.toml` (`~/.config/ait/config.toml`), or the
file named by `--config` / `AIT_CONFIG`. Keys: `coordinator`, `api_key`, `chain_id`,
`receipt_dir`. Receipts and the wallet key live under `$XDG_DATA_HOME/ait`
(`~/.local/share/ait`). The environment is read when the CLI starts, never at import.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import AitError
from client.sdk import DEFAULT_COORDINATOR

CONFIG_KEYS = ("coordinator", "api_key", "chain_id", "receipt_dir")


class ConfigError(AitError):
    pass


def config_home(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ait"


def data_home(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ait"


def default_config_path(env: Mapping[str, str]) -> Path:
    return Path(env["AIT_CONFIG"]) if env.get("AIT_CONFIG") else config_home(env) / "config.toml"


def default_wallet_path(env: Mapping[str, str]) -> Path:
    return data_home(env) / "wallet.key"


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's keys; a missing file is an empty config, a broken one an error."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    unknown = sorted(set(document) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    for key, value in document.items():
        if not isinstance(value, str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    return document


@dataclass(frozen=True)
class CliSettings:
    coordinator: str
    api_key: str | None
    chain_id: str | None
    receipt_dir: Path
    wallet_path: Path
    config_path: Path
    json: bool = False
    debug: bool = False


def resolve(
    *,
    env: Mapping[str, str],
    coordinator: str | None = None,
    api_key: str | None = None,
    config: Path | None = None,
    json: bool = False,
    debug: bool = False,
) -> CliSettings:
    """Flags win over the environment, the environment over the file."""
    config_path = config or default_config_path(env)
    file = read_config_file(config_path)

    def pick(flag: str | None, name: str) -> str | None:
        return flag or env.get(f"AIT_{name.upper()}") or file.get(name) or None

    receipt_dir = pick(None, "receipt_dir")
    return CliSettings(
        coordinator=pick(coordinator, "coordinator") or DEFAULT_COORDINATOR,
        api_key=pick(api_key, "api_key"),
        chain_id=pick(None, "chain_id"),
        receipt_dir=Path(receipt_dir).expanduser() if receipt_dir else data_home(env) / "receipts",
        wallet_path=default_wallet_path(env),
        config_path=config_path,
        json=json,
        debug=debug,
    )
