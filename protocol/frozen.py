"""Frozen dataclasses built without paying for their frozenness.

A frozen dataclass's generated `__init__` must get past its own `__setattr__` (which
refuses every assignment), so it stores each field through `object.__setattr__`: ~0.1 us
a field, ~0.6 us for a record of five against ~0.3 for storing into the instance's
`__dict__`. The coordinator builds about a dozen such records a job (requests handed to
the group commit, estimates, settlements, changes; docs/benchmarks.md, round 26).
`direct_init` gives a frozen dataclass an `__init__` that stores into `__dict__` (as attrs
does for its frozen classes): the same parameters, defaults and default factories; the
instances still refuse assignment, compare, hash and repr as before.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, TypeVar

T = TypeVar("T")

_FACTORY = object()  # a parameter's default when its field has a default_factory


def direct_init(cls: type[T]) -> type[T]:
    """`cls`, a frozen dataclass, with an `__init__` that stores its fields straight into
    the instance's `__dict__`. Refused (TypeError, at import) for what that `__init__`
    would get wrong: classes with `__slots__` (no `__dict__`), a `__post_init__`, fields
    left out of `__init__`, or `InitVar` pseudo-fields."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"direct_init: {cls.__qualname__} is not a frozen dataclass")
    problem = _unsupported(cls)
    if problem is not None:
        raise TypeError(f"direct_init: {cls.__qualname__} has {problem}")
    init = _compile_init(cls, dataclasses.fields(cls))  # type: ignore[arg-type]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def _unsupported(cls: type[Any]) -> str | None:
    if "__slots__" in cls.__dict__:
        return "__slots__"
    if hasattr(cls, "__post_init__"):
        return "__post_init__"
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields):
        return "fields without init"
    parameters = list(inspect.signature(cls.__init__).parameters)[1:]
    if parameters != [f.name for f in fields]:  # InitVar pseudo-fields are parameters too
        return "InitVar fields"
    return None


def _compile_init(cls: type[Any], fields: tuple[dataclasses.Field[Any], ...]) -> Any:
    """The `__init__` source for `fields`, compiled. Names come from the fields
    (identifiers, or the dataclass would not have compiled its own); defaults are bound
    as names of the function's globals, never written into the source. The function's
    own names start with `__direct_`, which no field can (a class body mangles names
    that start with two underscores), so a field named `self` or like them is safe."""
    namespace: dict[str, Any] = {"__direct_factory": _FACTORY}
    positional: list[str] = []
    keyword_only: list[str] = []
    body: list[str] = []
    for f in fields:
        parameter = f.name
        value = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"__direct_default_{f.name}"] = f.default
            parameter = f"{f.name}=__direct_default_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"__direct_factory_{f.name}"] = f.default_factory
            parameter = f"{f.name}=__direct_factory"
            value = f"__direct_factory_{f.name}() if {f.name} is __direct_factory else {f.name}"
        (keyword_only if f.kw_only else positional).append(parameter)
        body.append(f"    __direct_dict[{f.name!r}] = {value}")
    parameters = ["__direct_self", *positional, *(["*", *keyword_only] if keyword_only else [])]
    source = "\n".join(
        [
            f"def __init__({', '.join(parameters)}):",
            "    __direct_dict = __direct_self.__dict__",
            *body,
            "",
        ]
    )
    exec(compile(source, f"<direct_init {cls.__qualname__}>", "exec"), namespace)
    return namespace["__init__"]


__all__ = ["direct_init"]
