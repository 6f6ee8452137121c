"""Hints for SQLite's query planner, which keeps no statistics in this schema (no ANALYZE):
it judges an index by its columns alone, and an equality on a status column looks as
selective as one on a primary key."""

from __future__ import annotations

from typing import Any

from sqlalchemy.sql.elements import ColumnElement, UnaryExpression
from sqlalchemy.sql.operators import custom_op

_UNARY_PLUS: custom_op[Any] = custom_op("+")


def no_index(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """`column` as `+column`: the same value, but a term SQLite will not look up through an
    index (sqlite.org/optoverview.html, "Disqualifying WHERE clause terms using unary-+"),
    so the other terms of the WHERE choose the index. SQLite only: PostgreSQL has no unary
    plus for text."""
    return UnaryExpression(column, operator=_UNARY_PLUS, type_=column.type)


__all__ = ["no_index"]
