"""Miner settings: one frozen object from configs/miner.toml, then ``AIT_*`` env, then flags.

The file's shape is SPEC section 9. Each ``[[models]]`` entry needs ``name`` and
``runtime``; ``path`` (needed by text-generation, embedding and torchscript), ``price``
(AIT per unit, exact to 6 decimals, default 0) and ``unit`` (default per runtime) are
optional; any other key of the entry is handed to the runtime as an option.
Nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miner.runtime.base import RUNTIME_NAMES, ModelSpec, default_unit
from protocol.limits import MAX_CONCURRENCY, MAX_MODELS
from protocol.messages import UNITS
from protocol.money import ait_to_uait

DEFAULT_CONFIG = Path("configs/miner.toml")
NEEDS_PATH = ("text-generation", "embedding", "torchscript")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,2})$")
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


_MODEL_KEYS = ("name", "runtime", "path", "price", "unit", "options")


class ConfigError(ValueError):
    """A bad miner setting; the message is one line naming the key."""


@dataclass(frozen=True)
class MinerSettings:
    coordinator: str = "http://127.0.0.1:8000"
    api_key: str = ""
    key_file: Path = Path(".ait/miner.key")
    device: str = "auto"
    max_concurrency: int = 1
    work_dir: Path = Path(".ait/work")  # per-job scratch dirs (checkpoints)
    shutdown_grace_s: float = 30.0  # SIGTERM: wait this long for running jobs, then give back
    models: tuple[ModelSpec, ...] = ()

    def __post_init__(self) -> None:
        if not self.coordinator.startswith(("http://", "https://", "ws://", "wss://")):
            raise ConfigError(
                f"coordinator must be an http(s):// or ws(s):// URL, got {self.coordinator!r}"
            )
        if not _DEVICE_RE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not 1 <= self.max_concurrency <= MAX_CONCURRENCY:
            raise ConfigError(f"max_concurrency must be 1..{MAX_CONCURRENCY}")
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s must be >= 0")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ConfigError("[[models]] names a model twice")

    def model(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)


_SCALARS: dict[str, type] = {
    "coordinator": str,
    "api_key": str,
    "key_file": Path,
    "device": str,
    "max_concurrency": int,
    "work_dir": Path,
    "shutdown_grace_s": float,
}


def _coerce(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a {kind.__name__}, not a boolean")
    try:
        if kind is int:
            if isinstance(value, float):
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            if not isinstance(value, str | Path):
                raise ValueError
            return Path(value).expanduser()
        if not isinstance(value, str):
            raise ValueError
        return value
    except ValueError:
        raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r}") from None


def parse_model(entry: Any, index: int) -> ModelSpec:
    where = f"models[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table ([[models]])")
    name, runtime = entry.get("name"), entry.get("runtime")
    if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}.name must be a model name like 'gpt2'")
    if runtime not in RUNTIME_NAMES:
        raise ConfigError(f"{where}.runtime must be one of {', '.join(RUNTIME_NAMES)}")
    path = entry.get("path")
    if path is not None and not isinstance(path, str):
        raise ConfigError(f"{where}.path must be a string")
    if path is None and runtime in NEEDS_PATH:
        raise ConfigError(f"{where} ({name}): runtime {runtime} needs a path")
    try:
        price = ait_to_uait(entry.get("price", 0))
    except ValueError as exc:
        raise ConfigError(f"{where}.price: {exc}") from None
    if price < 0:
        raise ConfigError(f"{where}.price must be >= 0")
    unit = entry.get("unit", default_unit(runtime))
    if unit not in UNITS:
        raise ConfigError(f"{where}.unit must be one of {', '.join(UNITS)}")
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where}.options must be a table")
    extra = {
        k: v
        for k, v in entry.items()
        if k not in ("name", "runtime", "path", "price", "unit", "options")
    }
    return ModelSpec(
        name=name,
        runtime=runtime,
        path=str(Path(path).expanduser()) if path else None,
        price_uait_per_unit=price,
        unit=unit,
        options={**extra, **options},
    )


def load_settings(
    config: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> MinerSettings:
    """The file (``config``, else ``AIT_MINER_CONFIG``, else configs/miner.toml when it
    exists), then ``AIT_<KEY>`` environment variables, then the non-None ``overrides``."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    models: tuple[ModelSpec, ...] = ()
    path = config or env.get("AIT_MINER_CONFIG") or None
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            if key in _SCALARS:
                values[key] = _coerce(key, value, _SCALARS[key])
            elif key == "models":
                if not isinstance(value, list) or len(value) > MAX_MODELS:
                    raise ConfigError(f"models must be at most {MAX_MODELS} [[models]] tables")
                models = tuple(parse_model(entry, i) for i, entry in enumerate(value))
            else:
                raise ConfigError(f"config {path}: unknown key {key!r}")
    for key, kind in _SCALARS.items():
        name = "AIT_" + key.upper()
        if env.get(name):
            values[key] = _coerce(name, env[name], kind)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _SCALARS:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value, _SCALARS[key])
    return MinerSettings(**values, models=models)


def with_models(settings: MinerSettings, *models: ModelSpec) -> MinerSettings:
    """A copy serving ``models`` (tests and embedding)."""
    return dataclasses.replace(settings, models=tuple(models))
