"""fast_init: the faster constructor of the task records behaves like the generated one."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from feeder.core.model import EMPTY_HEADERS, Attempt, AttemptOutcome, State, Task, TaskSpec
from feeder.core.records import draft_class, fast_init


def _factory() -> list[int]:
    return [1]


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=_factory)


@fast_init
@dataclass(frozen=True, slots=True)
class Fast:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=_factory)


def test_same_signature_defaults_and_factories() -> None:
    assert str(inspect.signature(Fast)) == str(inspect.signature(Plain))
    assert (Fast(1).a, Fast(1).b, Fast(1).c) == (1, "b", [1])
    assert Fast(1).c is not Fast(1).c  # a fresh default per record
    assert Fast(2, "x", [3]) == Fast(a=2, b="x", c=[3]) != Fast(2)
    assert repr(Fast(1)) == repr(Plain(1)).replace("Plain", "Fast")
    with pytest.raises(TypeError):
        Fast()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Fast(1, d=2)  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", [Task, TaskSpec, Attempt])
def test_records_keep_their_constructor_signature(cls: type) -> None:
    params = inspect.signature(cls).parameters
    assert list(params) == [f.name for f in dataclasses.fields(cls)]
    for f in dataclasses.fields(cls):
        default = params[f.name].default
        if f.default is not dataclasses.MISSING:
            assert default == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert repr(default) == "<factory>", f.name
        else:
            assert default is inspect.Parameter.empty, f.name


def test_records_are_ordinary_frozen_instances() -> None:
    spec = TaskSpec("q")
    assert type(spec) is TaskSpec and spec.headers is EMPTY_HEADERS
    assert spec == TaskSpec(queue="q", payload=b"", headers=EMPTY_HEADERS)
    attempt = Attempt(1, "w", 2.0)
    assert (attempt.ended_at, attempt.outcome, attempt.error) == (None, AttemptOutcome.RUNNING, "")
    assert hash(attempt) == hash(Attempt(1, "w", 2.0))
    task = Task(1, "q", b"", EMPTY_HEADERS, 0, State.READY, 5, 1.0, 1.0)
    assert dataclasses.replace(task, attempt=2) == task.evolve(attempt=2)
    for record, name in ((spec, "queue"), (attempt, "error"), (task, "version")):
        with pytest.raises(FrozenInstanceError):
            setattr(record, name, None)
    with pytest.raises(TypeError):
        Task(1, "q")  # type: ignore[call-arg]


def test_refuses_what_it_cannot_reproduce() -> None:
    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None: ...

    @dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int = field(kw_only=True)

    @dataclass(frozen=True)
    class Unslotted:
        a: int

    for cls in (Checked, KeywordOnly):
        with pytest.raises(TypeError):
            fast_init(cls)
    with pytest.raises(TypeError):
        draft_class(Unslotted)
