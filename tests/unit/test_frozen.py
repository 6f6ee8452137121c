"""`protocol.frozen.direct_init`: a frozen dataclass's constructor without
`object.__setattr__`, held to what the dataclass's own constructor does."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import typing
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

import pytest

from chain.ledger import Settlement
from chain.store import Balance, HoldRequest, PostRequest
from coordinator.db.prepared import DmlResult
from coordinator.domain.jobs import Job, QueuedJob, Requirements
from coordinator.domain.matching import JobDemand, MinerSnapshot
from coordinator.domain.pricing import Estimate
from coordinator.service.jobs import Admission, JobRequest
from coordinator.service.jobstate import Change, MinerIdentity
from coordinator.service.lifecycle import ClaimRequest
from coordinator.service.settle import Completion
from protocol.frozen import direct_init
from protocol.messages import Message


@dataclass(frozen=True)
class Plain:
    name: str
    size: int = 3
    tags: list[str] = field(default_factory=list)
    note: str | None = field(default=None, kw_only=True)
    LIMIT: ClassVar[int] = 10


@direct_init
@dataclass(frozen=True)
class Direct:  # Plain's twin
    name: str
    size: int = 3
    tags: list[str] = field(default_factory=list)
    note: str | None = field(default=None, kw_only=True)
    LIMIT: ClassVar[int] = 10


def test_direct_init_builds_what_the_dataclass_builds() -> None:
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("a",), {}),
        (("a", 5), {}),
        (("a", 5, ["x"]), {"note": "n"}),
        ((), {"name": "b", "tags": ["y"], "note": None}),
    ]
    direct: Any = Direct
    plain: Any = Plain
    for args, kwargs in cases:
        made, expected = direct(*args, **kwargs), plain(*args, **kwargs)
        assert vars(made) == vars(expected)
        assert repr(made) == repr(expected).replace("Plain", "Direct")
    assert Direct("a") == Direct("a") and Direct("a") != Direct("a", 4)
    assert Direct("a").tags is not Direct("a").tags  # a fresh default per instance


def test_direct_init_refuses_the_calls_the_dataclass_refuses() -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}),
        (("a", 1, [], "n"), {}),  # note is keyword-only
        (("a",), {"colour": "red"}),
    ]
    makers: tuple[Any, ...] = (Plain, Direct)
    for args, kwargs in calls:
        for make in makers:
            with pytest.raises(TypeError):
                make(*args, **kwargs)


def test_a_direct_instance_is_still_frozen_and_copies_like_one() -> None:
    made = Direct("a", 2, ["t"], note="n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.name = "b"  # type: ignore[misc]
    assert dataclasses.replace(made, size=4) == Direct("a", 4, ["t"], note="n")
    assert pickle.loads(pickle.dumps(made)) == made
    assert copy.deepcopy(made) == made and copy.copy(made) == made


def test_fields_named_like_the_constructors_own_names_are_stored() -> None:
    @direct_init
    @dataclass(frozen=True)
    class Awkward:
        self: int
        _d: int = 1
        _FACTORY: list[int] = field(default_factory=list)

    made = Awkward(self=5, _d=2)
    assert (made.self, made._d, made._FACTORY) == (5, 2, [])
    assert Awkward(7)._FACTORY is not Awkward(7)._FACTORY


def _refused(build: Any) -> str:
    with pytest.raises(TypeError, match="direct_init") as caught:
        build()
    return str(caught.value)


def test_direct_init_refuses_what_its_constructor_would_get_wrong() -> None:
    @dataclass
    class Mutable:
        x: int

    @dataclass(frozen=True, slots=True)
    class Slotted:
        x: int

    @dataclass(frozen=True)
    class PostInit:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True)
    class WithInitVar:
        x: int
        seed: InitVar[int] = 0

    @dataclass(frozen=True)
    class Derived:
        x: int
        y: int = field(default=0, init=False)

    assert "not a frozen dataclass" in _refused(lambda: direct_init(Mutable))
    assert "not a frozen dataclass" in _refused(lambda: direct_init(int))
    assert "__slots__" in _refused(lambda: direct_init(Slotted))
    assert "__post_init__" in _refused(lambda: direct_init(PostInit))
    assert "InitVar" in _refused(lambda: direct_init(WithInitVar))
    assert "without init" in _refused(lambda: direct_init(Derived))


# The hot path's records (docs/benchmarks.md, round 26): each is constructed by
# direct_init's `__init__`, and that builds what the dataclass's own would.
HOT_RECORDS = [
    Settlement,
    Balance,
    HoldRequest,
    PostRequest,
    DmlResult,
    Job,
    QueuedJob,
    Requirements,
    Estimate,
    JobDemand,
    MinerSnapshot,
    Admission,
    JobRequest,
    Change,
    MinerIdentity,
    ClaimRequest,
    Completion,
    *typing.get_args(Message),  # every miner protocol message: a few a job on both sides
]


def _twin(cls: type[Any]) -> type[Any]:
    """`cls`'s fields in a frozen dataclass of the standard library's own making."""
    specs = [
        (
            f.name,
            f.type,
            field(default=f.default, default_factory=f.default_factory, kw_only=f.kw_only),
        )
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(cls.__name__, specs, frozen=True)


@pytest.mark.parametrize("cls", HOT_RECORDS, ids=lambda cls: cls.__qualname__)
def test_each_hot_record_is_built_by_direct_init_as_its_dataclass_would(cls: type[Any]) -> None:
    assert cls.__init__.__code__.co_filename == f"<direct_init {cls.__qualname__}>"
    twin = _twin(cls)
    fields = dataclasses.fields(cls)
    every = {f.name: object() for f in fields}  # a distinct value a field
    required = {
        f.name: every[f.name]
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    for given in (every, required):
        assert vars(cls(**given)) == vars(twin(**given))
    positional = [every[f.name] for f in fields if not f.kw_only]
    keywords = {f.name: every[f.name] for f in fields if f.kw_only}
    assert vars(cls(*positional, **keywords)) == vars(twin(*positional, **keywords))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cls(**required), fields[0].name, None)
