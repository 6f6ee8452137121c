"""Prepared statements: SQL compiled once, run straight on the driver (SQLite here;
PostgreSQL in `coordinator.db.pg_prepared`).

Sync Core still spends 40-100 us of Python per statement (execution context, parameter
and result set-up) around a few microseconds of SQLite. The hot path runs the same
statement objects again and again (built once at import: `load_job`, the ledger's,
`update_job`'s), so their compiled SQL, parameter order and result keys are kept and
reused. A statement object qualifies once it is seen a second time while still cached, so
statements built per call never pay for a plan. What a plan cannot do exactly as
SQLAlchemy would (Python-side column defaults, expanding IN lists, literal binds) is left
to SQLAlchemy.
"""

from __future__ import annotations

import operator
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from protocol.frozen import direct_init

SEEN_MAX = 512  # statements seen once, kept (alive) to recognise a second sighting
PLANS_MAX = 512


@direct_init
@dataclass(frozen=True)
class DmlResult:
    """What the service code reads of an INSERT/UPDATE/DELETE without RETURNING."""

    rowcount: int


@dataclass(frozen=True)
class _Plan:
    sql: str
    names: tuple[str, ...]  # parameter names in positional order
    fixed: Mapping[str, Any]  # values the statement carries itself (e.g. the 1 of `n + 1`)
    binders: tuple[Callable[[Any], Any] | None, ...]
    metadata: SimpleResultMetaData | None  # None: no rows come back
    converters: tuple[Callable[[Any], Any] | None, ...]
    # Derived: the binders that are set, by position, and (when the statement carries no
    # values of its own) an itemgetter of the names, which picks a row's arguments in C:
    # ~1.0 -> ~0.3 us a row, paid for every row of every statement (round 22).
    bound: tuple[tuple[int, Callable[[Any], Any]], ...] = field(init=False)
    pick: Callable[[Mapping[str, Any]], Any] | None = field(init=False)

    def __post_init__(self) -> None:
        bound = tuple((i, b) for i, b in enumerate(self.binders) if b is not None)
        object.__setattr__(self, "bound", bound)
        # (An itemgetter of one name answers the value itself, not a tuple: those take the
        # loop, as do statements with values of their own.)
        picks = not self.fixed and len(self.names) > 1
        object.__setattr__(self, "pick", operator.itemgetter(*self.names) if picks else None)

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        if self.pick is not None:
            picked: tuple[Any, ...] = self.pick(params)  # KeyError when one is missing
            if not self.bound:
                return picked
            values = list(picked)
        else:
            fixed = self.fixed
            values = [params[name] if name in params else fixed[name] for name in self.names]
        for i, bind in self.bound:
            values[i] = bind(values[i])
        return tuple(values)

    def rows(self, raw: list[Any]) -> list[Any]:
        if not any(self.converters):
            return raw
        return [
            tuple(v if c is None else c(v) for v, c in zip(row, self.converters, strict=True))
            for row in raw
        ]


def _compile(statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...]) -> _Plan | None:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys) or None)
    if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
        return None
    if any(
        getattr(compiled, name, None)
        for name in (
            "insert_prefetch",
            "update_prefetch",
            "post_compile_params",
            "literal_execute_params",
        )
    ):
        return None
    processors = compiled._bind_processors
    names = tuple(compiled.positiontup)
    fixed = {
        name: bind.effective_value
        for bind, name in compiled.bind_names.items()
        if not bind.required and bind.callable is None
    }
    binders = tuple(processors.get(name) for name in names)
    if any(isinstance(b, tuple) for b in binders):
        return None  # tuple parameters: SQLAlchemy's
    metadata = None
    converters: tuple[Callable[[Any], Any] | None, ...] = ()
    if compiled._result_columns:
        metadata = SimpleResultMetaData([col[0] for col in compiled._result_columns])
        converters = tuple(
            col[3]._cached_result_processor(dialect, None) for col in compiled._result_columns
        )
    return _Plan(compiled.string, names, fixed, binders, metadata, converters)  # type: ignore[arg-type]


class PlanCache:
    """Plans by statement object (held here, so its id is not reused while cached)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[int, ClauseElement] = OrderedDict()
        self._plans: OrderedDict[tuple[int, tuple[str, ...]], tuple[Any, _Plan | None]] = (
            OrderedDict()
        )

    def plan(self, statement: Any, keys: tuple[str, ...], dialect: Dialect) -> _Plan | None:
        key = (id(statement), keys)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is statement:
            return hit[1]
        sid = id(statement)
        if self._seen.get(sid) is not statement:
            self._seen[sid] = statement
            if len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            return None
        plan = _compile(statement, dialect, keys) if isinstance(statement, ClauseElement) else None
        self._plans[key] = (statement, plan)
        if len(self._plans) > PLANS_MAX:
            self._plans.popitem(last=False)
        return plan


def bind(
    cache: PlanCache, dialect: Dialect, statement: Any, parameters: Any
) -> tuple[_Plan, Any, bool] | None:
    """The statement's plan, its positional arguments and whether they are many sets; or
    None: let SQLAlchemy run it."""
    many = isinstance(parameters, Sequence) and not isinstance(parameters, Mapping)
    if many:
        if not parameters or not isinstance(parameters[0], Mapping):
            return None
        keys = tuple(sorted(parameters[0]))
    elif parameters is None:
        keys, parameters = (), {}
    elif isinstance(parameters, Mapping):
        keys = tuple(sorted(parameters))
    else:
        return None
    plan = cache.plan(statement, keys, dialect)
    if plan is None:
        return None
    try:
        args: Any = [plan.args(p) for p in parameters] if many else plan.args(parameters)
    except KeyError:
        return None  # a missing parameter: SQLAlchemy says which
    if many and plan.metadata is not None:
        return None
    return plan, args, many


def run(
    conn: Connection, cache: PlanCache, statement: Any, parameters: Any
) -> IteratorResult[Any] | DmlResult | None:
    """The statement's result through its plan on SQLite, or None: let SQLAlchemy run it."""
    bound = bind(cache, conn.dialect, statement, parameters)
    if bound is None:
        return None
    plan, args, many = bound
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    cursor = driver.cursor()
    try:
        if many:
            cursor.executemany(plan.sql, args)
        else:
            cursor.execute(plan.sql, args)
    except sqlite3.Error as error:
        raise exc.DBAPIError.instance(plan.sql, args, error, sqlite3.Error) from error
    if plan.metadata is None:
        return DmlResult(cursor.rowcount)
    return IteratorResult(plan.metadata, iter(plan.rows(cursor.fetchall())))


__all__ = ["DmlResult", "PlanCache", "bind", "run"]
