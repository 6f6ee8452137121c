"""text-generation runtime on CPU with a tiny GPT-2 built locally (random weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from miner.runtime.base import JobCancelled, JobFailed, ModelSpec
from miner.runtime.registry import ModelCache, get_runtime, run_job
from miner.runtime.tiny import ProgressLog, build_tiny_gpt2, local_context


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    path = build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))
    return ModelSpec("tiny-gpt2", "text-generation", str(path), 20, "token", {})


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache()


def run(
    spec: ModelSpec, cache: ModelCache, tmp_path: Path, job_input: Any, **params: Any
) -> tuple[dict[str, Any], int, ProgressLog]:
    ctx, log = local_context(job_input, params, work_dir=tmp_path)
    result = run_job(spec, ctx, cache)
    assert result.content_type == "application/json"
    return json.loads(result.output_bytes), result.units, log


def test_fixed_seed_gives_the_same_text_twice(
    spec: ModelSpec, cache: ModelCache, tmp_path: Path
) -> None:
    a, units_a, _ = run(spec, cache, tmp_path, "Hello world", max_new_tokens=12, seed=7)
    b, units_b, _ = run(spec, cache, tmp_path, "Hello world", max_new_tokens=12, seed=7)
    c, _, _ = run(spec, cache, tmp_path, "Hello world", max_new_tokens=12, seed=8)
    assert a == b and units_a == units_b
    assert a["text"] == a["generations"][0]["text"]
    assert c["text"] != a["text"]  # the seed matters: sampling is real


def test_batch_of_prompts_counts_generated_tokens(
    spec: ModelSpec, cache: ModelCache, tmp_path: Path
) -> None:
    prompts = ["The quick brown fox", "A miner", "Tokens are counted and every job"]
    body, units, log = run(spec, cache, tmp_path, prompts, max_new_tokens=9, seed=1)
    gens = body["generations"]
    assert [g["prompt"] for g in gens] == prompts
    assert "text" not in body  # only a single-string input gets the shortcut
    assert all(1 <= g["tokens"] <= 9 for g in gens)
    assert units == sum(g["tokens"] for g in gens)
    assert log.reports[-1][0] == 100
    percents = [p for p, _ in log.reports]
    assert percents == sorted(percents)


def test_greedy_is_deterministic_and_matches_the_model(
    spec: ModelSpec, cache: ModelCache, tmp_path: Path
) -> None:
    import torch

    a, _, _ = run(spec, cache, tmp_path, "hello", max_new_tokens=6, temperature=0)
    b, _, _ = run(spec, cache, tmp_path, "hello", max_new_tokens=6, temperature=0)
    assert a == b
    # Recompute the first greedy token directly from the model's logits.
    loaded = cache.get(spec, "cpu")
    ids = loaded.tokenizer("hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first = int(loaded.model(ids).logits[0, -1].argmax())
    assert a["text"].startswith(loaded.tokenizer.decode([first]))


def test_model_is_loaded_once_for_many_jobs(spec: ModelSpec, tmp_path: Path) -> None:
    own = ModelCache()
    for _ in range(3):
        run(spec, own, tmp_path, "x", max_new_tokens=2)
    assert own.loads == 1


@pytest.mark.parametrize(
    ("job_input", "params", "message"),
    [
        ("hi", {"max_tokens": 5}, "unknown param(s) for text-generation: max_tokens"),
        ("hi", {"max_new_tokens": 0}, "max_new_tokens must be between 1"),
        ("hi", {"max_new_tokens": 5000}, "max_new_tokens must be between 1 and 1024"),
        ("hi", {"temperature": -1}, "temperature must be between"),
        ("hi", {"top_p": 1.5}, "top_p must be between"),
        ("hi", {"seed": "abc"}, "seed must be an integer"),
        ({"prompt": "hi"}, {}, "input must be a string or a list of strings"),
        ([], {}, "at least one prompt"),
        (["ok", 3], {}, "input[1] must be a string"),
        ("word " * 200, {"max_new_tokens": 10}, "exceeds the model's context of 128 tokens"),
        (["p"] * 33, {}, "at most 32 per job"),
        (["ok", ""], {}, "input[1] is an empty prompt"),
        ("hi", {"temperature": 0.001}, "temperature must be 0 (greedy) or at least 0.01"),
    ],
)
def test_bad_jobs_fail_clearly(
    spec: ModelSpec,
    cache: ModelCache,
    tmp_path: Path,
    job_input: Any,
    params: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(JobFailed, match=None) as info:
        run(spec, cache, tmp_path, job_input, **params)
    assert message in str(info.value)


def test_cancel_stops_generation(spec: ModelSpec, cache: ModelCache, tmp_path: Path) -> None:
    log = ProgressLog(cancel_at=10)
    # Seeded: unseeded sampling ended with the end-of-text token before 10 tokens in about
    # one run of 30 (the job then completed, never cancelled).
    params = {"max_new_tokens": 100, "seed": 1}
    ctx, _ = local_context("Hello", params, work_dir=tmp_path, progress=log)
    with pytest.raises(JobCancelled):
        run_job(spec, ctx, cache)
    assert log.reports[-1][0] < 100


def test_missing_model_directory_fails_the_job(tmp_path: Path) -> None:
    missing = ModelSpec("gone", "text-generation", str(tmp_path / "nope"), 1, "token", {})
    ctx, _ = local_context("hi", work_dir=tmp_path)
    with pytest.raises(JobFailed, match="not a local directory"):
        run_job(missing, ctx, ModelCache())


def test_file_input_is_read_as_text(spec: ModelSpec, cache: ModelCache, tmp_path: Path) -> None:
    body, units, _ = run(spec, cache, tmp_path, b"Hello world", max_new_tokens=3, seed=1)
    assert body["generations"][0]["prompt"] == "Hello world" and units >= 1
    assert get_runtime("text-generation").default_unit == "token"
