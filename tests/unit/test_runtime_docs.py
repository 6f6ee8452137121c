"""docs/runtimes.md stays true: its config entries parse, every param is documented."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("torch")

from miner.config import parse_model
from miner.runtime import benchmark, embedding, text_generation, torchscript, training
from miner.runtime.base import RUNTIME_NAMES, default_unit

DOC = (Path(__file__).resolve().parents[2] / "docs" / "runtimes.md").read_text()


def test_every_toml_example_is_a_valid_models_entry() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC, flags=re.S)
    runtimes = set()
    for block in blocks:
        for i, entry in enumerate(tomllib.loads(block)["models"]):
            spec = parse_model(entry, i)
            runtimes.add(spec.runtime)
            assert spec.unit == default_unit(spec.runtime)
    assert runtimes == set(RUNTIME_NAMES) - {"echo"}


def test_every_param_and_hyperparameter_is_documented() -> None:
    documented = set(re.findall(r"`([a-z_]+)`", DOC))
    for module in (text_generation, embedding, torchscript, training, benchmark):
        missing = set(module.PARAMS) - documented
        assert not missing, f"{module.__name__}: undocumented params {missing}"
    assert set(training.HYPER) <= documented


def test_every_runtime_has_a_section_with_an_ait_submit_line() -> None:
    for name in set(RUNTIME_NAMES) - {"echo"}:
        section = DOC.split(f"\n## {name}\n", 1)
        assert len(section) == 2, f"no section for {name}"
        body = section[1].split("\n## ", 1)[0]
        assert "ait submit --model" in body, name
        for word in ("**input**", "**params**", "**output**", "**unit**"):
            assert word in body, (name, word)
