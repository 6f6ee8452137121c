"""Datasets for the training runtime, parsed from an uploaded CSV or JSON file.

Accepted shapes (never unpickled: only CSV text and JSON are read):

- tabular / image (``mlp``, ``cnn``): CSV with a header row (a file or an inline
  string), or JSON ``{"x": [...], "y": [...]}``, or a JSON list of records
  ``[{"f1": 0.1, "label": "cat"}, ...]``. The target column is ``target`` (a param) or
  the column named label/target/y, else the last one. Integer or string targets mean
  classification, fractional ones regression (``task`` overrides).
- text (``transformer``): a JSON string, list of strings or ``{"text": ...}``, a CSV with
  a ``text`` column, or plain UTF-8 text; trained on its bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from miner.runtime.base import JobFailed

TARGET_NAMES = ("label", "target", "y")


@dataclass(frozen=True)
class Tabular:
    x: torch.Tensor  # float32 (N, features) or (N, C, H, W)
    y: torch.Tensor  # int64 class indices (classification) or float32 (N, outputs)
    task: str  # classification | regression
    labels: list[Any]  # class values in index order (classification)
    feature_names: list[str]


def decode(raw: Any, max_bytes: int) -> Any:
    """The dataset as a JSON value, CSV rows or text (``("csv", rows)``/``("text", s)``)."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > max_bytes:
            raise JobFailed(f"dataset is {len(raw)} bytes; at most {max_bytes}")
        try:
            text = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise JobFailed("dataset must be UTF-8 CSV or JSON") from None
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise JobFailed(f"dataset looks like JSON but does not parse: {exc}") from None
        return ("csv", text)
    if raw is None:
        raise JobFailed("training needs a dataset as input (an uploaded CSV or JSON file)")
    if isinstance(raw, str):
        # Inline text (``--input "$(cat data.csv)"``): CSV for tables, text for the LM.
        if len(raw) > max_bytes:
            raise JobFailed(f"dataset is {len(raw)} characters; at most {max_bytes}")
        return ("csv", raw)
    return raw


def tabular(value: Any, target: str | int | None, task: str | None, max_rows: int) -> Tabular:
    """Features and targets from CSV text or JSON, checked cell by cell."""
    if isinstance(value, tuple) and value[0] == "csv":
        header, rows = _csv_rows(value[1], max_rows)
        return _from_columns(header, rows, target, task)
    if isinstance(value, dict) and "x" in value and "y" in value:
        return _from_xy(value["x"], value["y"], task, max_rows)
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        if len(value) > max_rows:
            raise JobFailed(f"dataset has {len(value)} rows; at most {max_rows}")
        header = [str(k) for k in value[0]]
        rows = []
        for i, rec in enumerate(value):
            if set(rec) != set(header):
                raise JobFailed(f"dataset record {i} has different fields from record 0")
            rows.append([rec[k] for k in header])
        return _from_columns(header, rows, target, task)
    raise JobFailed(
        'dataset must be CSV with a header, JSON {"x": [...], "y": [...]} or a list of records'
    )


def _csv_rows(text: str, max_rows: int) -> tuple[list[str], list[list[Any]]]:
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        raise JobFailed(f"CSV dataset does not parse: {exc}") from None
    if len(rows) < 2:
        raise JobFailed("CSV dataset needs a header row and at least one data row")
    if len(rows) - 1 > max_rows:
        raise JobFailed(f"dataset has {len(rows) - 1} rows; at most {max_rows}")
    header = [h.strip() for h in rows[0]]
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise JobFailed(f"CSV line {i} has {len(row)} cells; the header has {len(header)}")
    return header, [[cell.strip() for cell in row] for row in rows[1:]]


def _number(cell: Any, where: str) -> float:
    if isinstance(cell, bool):
        raise JobFailed(f"{where}: expected a number, got {cell!r}")
    try:
        value = float(cell)
    except (TypeError, ValueError):
        raise JobFailed(f"{where}: expected a number, got {cell!r}") from None
    if not math.isfinite(value):
        raise JobFailed(f"{where}: {cell!r} is not a finite number")
    return value


def _from_columns(
    header: list[str], rows: list[list[Any]], target: str | int | None, task: str | None
) -> Tabular:
    if len(header) < 2:
        raise JobFailed("dataset needs at least one feature column and a target column")
    col = _target_index(header, target)
    features = [h for i, h in enumerate(header) if i != col]
    xs = [
        [_number(v, f"row {r + 1}, column {header[i]!r}") for i, v in enumerate(row) if i != col]
        for r, row in enumerate(rows)
    ]
    ys = [row[col] for row in rows]
    x = torch.tensor(xs, dtype=torch.float32)
    y, kind, labels = _targets(ys, task)
    return Tabular(x, y, kind, labels, features)


def _target_index(header: list[str], target: str | int | None) -> int:
    if isinstance(target, int):
        if not -len(header) <= target < len(header):
            raise JobFailed(f"target column {target} does not exist ({len(header)} columns)")
        return target % len(header)
    if isinstance(target, str):
        if target not in header:
            raise JobFailed(f"target column {target!r} not in the header {header}")
        return header.index(target)
    for name in TARGET_NAMES:
        if name in header:
            return header.index(name)
    return len(header) - 1


def _targets(ys: list[Any], task: str | None) -> tuple[torch.Tensor, str, list[Any]]:
    numbers: list[float] | None = []
    for v in ys:
        try:
            assert numbers is not None
            numbers.append(_number(v, "target"))
        except JobFailed:
            numbers = None
            break
    if task == "regression" or (task is None and numbers and any(n != int(n) for n in numbers)):
        if numbers is None:
            raise JobFailed("regression needs numeric targets")
        return torch.tensor(numbers, dtype=torch.float32).unsqueeze(1), "regression", []
    integral = numbers is not None and all(n == int(n) for n in numbers)
    keys: list[Any] = [int(n) for n in numbers or []] if integral else [str(v) for v in ys]
    labels = sorted(set(keys))
    if len(labels) < 2:
        raise JobFailed("classification needs at least two distinct target values")
    index = {label: i for i, label in enumerate(labels)}
    return torch.tensor([index[k] for k in keys], dtype=torch.int64), "classification", labels


def _from_xy(xs: Any, ys: Any, task: str | None, max_rows: int) -> Tabular:
    if not isinstance(xs, list) or not isinstance(ys, list) or not xs:
        raise JobFailed('dataset "x" and "y" must be non-empty lists')
    if len(xs) != len(ys):
        raise JobFailed(f'dataset has {len(xs)} "x" rows but {len(ys)} "y" values')
    if len(xs) > max_rows:
        raise JobFailed(f"dataset has {len(xs)} rows; at most {max_rows}")
    from miner.runtime.torchscript import nested_shape

    shape = nested_shape(xs, max_elements=max_rows * 4096)
    x = torch.tensor(xs, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise JobFailed('dataset "x" holds non-finite numbers')
    y, kind, labels = _targets(ys, task)
    return Tabular(x, y, kind, labels, [f"x{i}" for i in range(math.prod(shape[1:]))])


def text_bytes(value: Any, max_bytes: int) -> bytes:
    """The training text of a language-model dataset as bytes."""
    if isinstance(value, tuple) and value[0] == "csv":
        text = value[1]
        try:
            rows = list(csv.reader(io.StringIO(text)))
        except csv.Error:
            rows = []  # not CSV: plain text
        if rows and [h.strip() for h in rows[0]].count("text") == 1:
            col = [h.strip() for h in rows[0]].index("text")
            text = "\n".join(row[col] for row in rows[1:] if len(row) > col)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, dict) and isinstance(value.get("text"), (str, list)):
        inner: bytes = text_bytes(value["text"], max_bytes)
        return inner
    elif isinstance(value, list) and value and all(isinstance(s, str) for s in value):
        text = "\n".join(value)
    else:
        raise JobFailed('a language-model dataset is text: a string, a list of strings or {"text"}')
    data: bytes = str(text).encode("utf-8")
    if len(data) > max_bytes:
        raise JobFailed(f"dataset text is {len(data)} bytes; at most {max_bytes}")
    return data
