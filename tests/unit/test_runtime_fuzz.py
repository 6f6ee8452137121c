"""Any JSON input and params: a runtime answers a result or JobFailed, never crashes.

A crash would reach the client as "miner runtime error" (a bug); bad input must instead
fail the job with a clear message. Hypothesis drives the real runtimes on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miner.runtime import text_generation, torchscript, training
from miner.runtime.base import JobFailed, ModelSpec, RuntimeResult
from miner.runtime.registry import ModelCache, run_job
from miner.runtime.tiny import build_tiny_gpt2, build_tiny_torchscript, local_context

pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.(script|save)` is deprecated:DeprecationWarning"
)

numbers = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True, width=64)
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=30,
)
# Tensors of roughly the right shape are the interesting case: mix them in.
vectors = st.one_of(
    st.lists(st.lists(numbers, min_size=1, max_size=5), min_size=1, max_size=4),
    st.lists(st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4), min_size=1, max_size=3),
)


def params_for(names: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    small = st.one_of(scalars, st.integers(-3, 70), st.sampled_from(["1", "0.5", "x", "fp16"]))
    return st.dictionaries(st.sampled_from([*names, "bogus"]), small, max_size=3)


def outcome(spec: ModelSpec, cache: ModelCache, tmp: Path, job_input: Any, params: Any) -> Any:
    ctx, _ = local_context(job_input, params, work_dir=tmp)
    try:
        result = run_job(spec, ctx, cache)
    except JobFailed as exc:
        assert str(exc) and "\n" not in str(exc)  # one clear line
        return exc
    assert isinstance(result, RuntimeResult) and result.units >= 0
    return result


@pytest.fixture(scope="module")
def script_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = build_tiny_torchscript(tmp_path_factory.mktemp("ts") / "mlp.pt")
    return ModelSpec("mlp", "torchscript", str(path), 1, "item", {"max_elements": 1000})


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(job_input=st.one_of(json_values, vectors), params=params_for(torchscript.PARAMS))
def test_torchscript_never_crashes(
    script_spec: ModelSpec, tmp_path: Path, job_input: Any, params: dict[str, Any]
) -> None:
    got = outcome(script_spec, ModelCache(), tmp_path, job_input, params)
    if isinstance(got, RuntimeResult):
        json.loads(got.output_bytes)


datasets = st.one_of(
    json_values,
    st.builds(
        lambda rows: ("a,b,label\n" + "\n".join(",".join(map(str, r)) for r in rows)).encode(),
        st.lists(
            st.lists(
                st.one_of(st.integers(-3, 3), st.text('xy,"', max_size=2)), min_size=2, max_size=4
            ),
            min_size=1,
            max_size=6,
        ),
    ),
    st.binary(max_size=40),
    st.builds(
        lambda rows: ("a,b,label\n" + "\n".join(f"{x},{y},{c}" for x, y, c in rows)).encode(),
        st.lists(
            st.tuples(st.floats(-5, 5), st.integers(-5, 5), st.integers(0, 2)),
            min_size=2,
            max_size=8,
        ),
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(dataset=datasets, params=params_for(training.PARAMS))
def test_training_never_crashes(tmp_path: Path, dataset: Any, params: dict[str, Any]) -> None:
    spec = ModelSpec("trainer", "training", None, 1, "second", {"max_epochs": 3})
    outcome(spec, ModelCache(), tmp_path / "w", dataset, params)


GPT2_CACHE = ModelCache()  # one load for all examples


@pytest.fixture(scope="module")
def gpt2_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))
    return ModelSpec("gpt2", "text-generation", str(path), 1, "token", {})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    job_input=st.one_of(json_values, st.lists(st.text(max_size=12), min_size=1, max_size=3)),
    params=params_for(text_generation.PARAMS),
)
def test_text_generation_never_crashes(
    gpt2_spec: ModelSpec, tmp_path: Path, job_input: Any, params: dict[str, Any]
) -> None:
    got = outcome(gpt2_spec, GPT2_CACHE, tmp_path, job_input, params)
    if isinstance(got, RuntimeResult):
        body = json.loads(got.output_bytes)
        assert got.units == sum(g["tokens"] for g in body["generations"])
