"""The coordinator names an SQLite too old for its statements instead of failing on them."""

from __future__ import annotations

import sqlite3

import pytest

from coordinator.db.sqlite_sync import MIN_SQLITE_VERSION, SqliteTooOld, require_sqlite


def test_an_sqlite_without_returning_is_refused_with_what_to_do() -> None:
    with pytest.raises(SqliteTooOld) as refused:
        require_sqlite((3, 31, 1))  # Ubuntu 20.04's: no RETURNING, 999 bound parameters
    assert str(refused.value) == (
        "this Python's sqlite3 module links SQLite 3.31.1; the coordinator needs 3.35.0 or "
        'newer (or use PostgreSQL: db = "postgresql+asyncpg://...")'
    )


def test_the_minimum_and_this_machines_sqlite_are_accepted() -> None:
    require_sqlite(MIN_SQLITE_VERSION)
    require_sqlite(sqlite3.sqlite_version_info)
