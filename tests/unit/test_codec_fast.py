"""The per-class event encoder writes exactly the bytes of the generic `to_compact_wire` walk."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import EVENT_TYPES, Event, decode_event, encode_event, event_to_wire
from schemas.codec import WIRE_VERSION, compact_encoder, to_compact_wire
from tests.unit.test_schemas import _sample_event


def generic_encoding(event: Event) -> bytes:
    """What `encode_event` wrote before it had per-class encoders: the reference."""
    wire: dict[str, Any] = {"v": WIRE_VERSION, "kind": event.KIND}
    wire.update(to_compact_wire(event))
    return orjson.dumps(wire)


def values_of(tp: Any) -> st.SearchStrategy[Any]:
    """Any value of an annotation the schemas use, defaults included now and then."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is str:
        return st.text(max_size=12)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return st.one_of(st.none(), *(values_of(a) for a in inner))
    if origin is tuple:
        return st.lists(values_of(args[0]), max_size=3).map(tuple)
    if origin is dict or tp is dict:
        return st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=3)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return instances_of(tp)
    raise AssertionError(f"no strategy for {tp!r}")


def instances_of(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of a dataclass with every field drawn (or left at its default)."""
    hints = get_type_hints(cls)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):
        drawn = values_of(hints[f.name])
        fields[f.name] = drawn if f.default is dataclasses.MISSING else st.just(f.default) | drawn
    return st.fixed_dictionaries(fields).map(lambda kwargs: cls(**kwargs))


events = st.sampled_from(EVENT_TYPES).flatmap(instances_of)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.KIND)
def test_every_event_type_encodes_as_the_generic_walk_with_every_field_set(cls: Any) -> None:
    event = _sample_event(cls)
    assert encode_event(event) == generic_encoding(event)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.KIND)
def test_every_event_type_encodes_as_the_generic_walk_with_only_required_fields(cls: Any) -> None:
    full = _sample_event(cls)
    required = {
        f.name: getattr(full, f.name)
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    event = cls(**required)
    assert encode_event(event) == generic_encoding(event)


@settings(max_examples=500)
@given(events)
def test_any_event_encodes_byte_for_byte_as_the_generic_walk(event: Event) -> None:
    assert encode_event(event) == generic_encoding(event)
    assert event_to_wire(event) == orjson.loads(generic_encoding(event))
    assert decode_event(encode_event(event)) == event


def test_an_encoder_is_built_once_per_class_and_head() -> None:
    cls = EVENT_TYPES[0]
    assert compact_encoder(cls) is compact_encoder(cls)
    assert compact_encoder(cls, {"v": 1}) is not compact_encoder(cls)


def test_only_dataclasses_have_an_encoder() -> None:
    with pytest.raises(TypeError, match="needs a dataclass"):
        compact_encoder(dict)
