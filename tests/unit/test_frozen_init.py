"""`quick_init`: the same constructor as the dataclass's own, only cheaper."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.application.ports import EventMessage, OutcomeMessage
from service.contract.encode import EncodedEvent
from service.domain.apply import ProcessedRecord
from service.domain.commands import Change, Command, Delivery, Received, Source
from service.domain.events import AppliedChange, HistoryEntry, Outcome, PreferenceChanged
from service.domain.frozen import quick_init
from service.domain.model import Rule, SubjectKey

QUICK = [
    EventMessage,
    OutcomeMessage,
    EncodedEvent,
    ProcessedRecord,
    Change,
    Command,
    Delivery,
    Received,
    Source,
    AppliedChange,
    HistoryEntry,
    Outcome,
    PreferenceChanged,
    Rule,
    SubjectKey,
]


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: str
    b: int
    c: str | None = None
    d: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.b < 0:
            raise ValueError("b must not be negative")


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Quick:
    a: str
    b: int
    c: str | None = None
    d: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.b < 0:
            raise ValueError("b must not be negative")


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_each_quick_class_keeps_the_dataclass_signature(cls: type) -> None:
    init: Any = vars(cls)["__init__"]
    params = list(inspect.signature(init).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    assert init.__code__.co_filename == "<string>"
    assert "_set_" in "".join(init.__code__.co_names)


@given(
    a=st.text(max_size=5),
    b=st.integers(-3, 3),
    c=st.none() | st.text(max_size=3),
    d=st.lists(st.integers(), max_size=3).map(tuple),
    by_keyword=st.booleans(),
    with_defaults=st.booleans(),
)
def test_quick_init_builds_what_the_dataclass_init_builds(
    a: str, b: int, c: str | None, d: tuple[int, ...], by_keyword: bool, with_defaults: bool
) -> None:
    def build(cls: type[_Plain] | type[_Quick]) -> Any:
        if with_defaults:
            return cls(a=a, b=b) if by_keyword else cls(a, b)
        return cls(a=a, b=b, c=c, d=d) if by_keyword else cls(a, b, c, d)

    try:
        plain = build(_Plain)
    except ValueError as refused:
        with pytest.raises(ValueError, match=str(refused)):
            build(_Quick)
        return
    quick = build(_Quick)
    assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
    assert quick == _Quick(*dataclasses.astuple(plain))


def test_a_quick_instance_stays_frozen_and_checked() -> None:
    rule = Rule("t", "email", "opt_out", datetime(2026, 1, 1, tzinfo=UTC), "web", "c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.topic = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="timezone-aware"):
        Rule("t", "email", "opt_out", datetime(2026, 1, 1), "web", "c")
    with pytest.raises(TypeError):
        Rule("t", "email")  # type: ignore[call-arg]
    assert dataclasses.replace(rule, topic="x").topic == "x"
    assert hash(rule) == hash(dataclasses.replace(rule))


def test_classes_it_cannot_speed_up_are_refused() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int = dataclasses.field(kw_only=True)

    for cls in (Mutable, WithFactory, KeywordOnly):
        with pytest.raises(TypeError):
            quick_init(cls)
