"""How the CLI talks: one JSON document on stdout with --json, rich tables for people,
and every log line, warning and progress bar on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 250  # tables written to a pipe or file are not cut to 80 columns


def stdout() -> Console:
    # Built per call: CliRunner and pipes swap sys.stdout after import time.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(file=sys.stdout, highlight=False, soft_wrap=True, width=width)


def stderr() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A line for the person at the terminal, never mixed into stdout's data."""
    stderr().print(message, markup=False)


def error_line(message: str) -> None:
    stderr().print(f"error: {message}", style="red", markup=False)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    *,
    wrap: Sequence[str] = (),
) -> None:
    """A table for people. Cells stay on one line (cut with an ellipsis when the terminal is
    too narrow) except in the `wrap` columns; the first column, an id people copy, is
    never cut."""
    cells = [[fmt(cell) for cell in row] for row in rows]
    grid = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,  # two spaces between columns, as `kubectl get` does
    )
    for index, column in enumerate(columns):
        if index == 0:
            width = max([len(column), *(len(row[0]) for row in cells)])
            grid.add_column(column, no_wrap=True, min_width=width)
        elif column in wrap:
            grid.add_column(column, overflow="fold")
        else:
            grid.add_column(column, no_wrap=True, overflow="ellipsis", min_width=len(column))
    for row in cells:
        grid.add_row(*row)
    stdout().print(grid)


def when(value: Any) -> str:
    """An ISO time for a table cell, to the second: 2026-01-01 12:00:00."""
    return value[:19].replace("T", " ") if isinstance(value, str) else fmt(value)


def fields(title: str | None, pairs: Iterable[tuple[str, Any]]) -> None:
    """A two-column key/value view of one object."""
    grid = Table(title=title, show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(key, fmt(value))
    stdout().print(grid)


def result_text(result: Any) -> str:
    """A job result for people: text as is, anything else as indented JSON."""
    if isinstance(result, str):
        return result
    return json.dumps(result, indent=2, ensure_ascii=False)
