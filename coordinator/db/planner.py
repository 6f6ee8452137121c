"""A hint for the query planners, which judge an equality on a status column as selective
as a list of primary keys: SQLite keeps no statistics in this schema (no ANALYZE), and
PostgreSQL has none for a table until autovacuum first analyzes it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, literal_column
from sqlalchemy.sql.elements import ColumnElement


def no_index(column: ColumnElement[str]) -> ColumnElement[str]:
    """The text `column` as `column || ''`: the same value, but an expression, which no
    index serves (on SQLite and PostgreSQL alike), so the WHERE's other terms choose the
    index (sqlite.org/optoverview.html, "Disqualifying WHERE clause terms")."""
    assert isinstance(column.type, String), column.type
    empty: ColumnElement[Any] = literal_column("''", type_=column.type)
    return column.concat(empty)


__all__ = ["no_index"]
