"""Wire types: every type round-trips, and decoding names the bad field."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

import orjson
import pytest

from schemas import (
    EVENT_TYPES,
    Alternative,
    Decision,
    DecisionRecord,
    OtnToken,
    PageState,
    RecurringToken,
    Referral,
    SchemaError,
    SendRequest,
    UserState,
    decode_decision,
    decode_decision_record,
    decode_event,
    decode_page_state,
    decode_request,
    decode_user_state,
    encode_decision,
    encode_decision_record,
    encode_event,
    encode_page_state,
    encode_request,
    encode_user_state,
    request_from_wire,
)
from schemas.codec import is_strict

DECISION = Decision(
    request_id="r1",
    page_id="p",
    user_id="u",
    decided_at=1_700_000_000_000,
    allowed=True,
    reason="otn_token",
    detail="one-time token",
    rules_version="2026-11-24",
    mechanism="OTN",
    valid_until=1_800_000_000_000,
    alternatives=(Alternative(mechanism="UTILITY", detail="a template"),),
    token="tok",
    topic="restock",
)


def _sample(tp: Any, name: str) -> Any:
    """A non-default value of an annotation, so round-trips exercise every field."""
    origin = getattr(tp, "__origin__", None)
    args = getattr(tp, "__args__", ())
    if tp is str:
        return f"{name}-value"
    if tp is int:
        return 1_700_000_000_123
    if tp is bool:
        return True
    if origin is tuple:
        return (_sample(args[0], name),)
    if tp is Decision:
        return DECISION
    if tp is Referral:
        return Referral(source="ADS", type="OPEN_THREAD", ref="r", ad_id="1")
    if str(origin) == "typing.Literal":
        return args[-1]
    if args and type(None) in args:
        return _sample(next(a for a in args if a is not type(None)), name)
    if origin is dict or tp is dict:
        return {"text": "hi"}
    raise AssertionError(f"no sample for {tp!r}")


def _sample_event(cls: Any) -> Any:
    """An event of `cls` with every field set."""
    hints = get_type_hints(cls)
    values = {f.name: _sample(hints[f.name], f.name) for f in dataclasses.fields(cls)}
    values["platform"] = "instagram"
    return cls(**values)


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.KIND)
def test_every_event_type_round_trips_with_every_field_set(cls: Any) -> None:
    event = _sample_event(cls)
    wire = encode_event(event)
    assert orjson.loads(wire)["kind"] == cls.KIND
    assert decode_event(wire) == event


def test_kinds_are_unique() -> None:
    assert len({c.KIND for c in EVENT_TYPES}) == len(EVENT_TYPES)


def test_request_decision_and_state_round_trip() -> None:
    request = SendRequest(
        request_id="r",
        page_id="p",
        user_id="u",
        platform="instagram",
        purpose="human_agent",
        topic="t",
        tag="HUMAN_AGENT",
        human_author="ann",
        message={"text": "hi"},
        send_by=5,
        created_at=4,
    )
    assert decode_request(encode_request(request)) == request
    assert decode_decision(encode_decision(DECISION)) == DECISION
    state = UserState(
        page_id="p",
        user_id="u",
        last_opener_at=1,
        last_message_at=2,
        otn=(
            OtnToken(
                token="a",
                topic="t",
                created_at=1,
                status="reserved",
                request_id="r",
                released=("q",),
            ),
        ),
        recurring=(RecurringToken(token="b", created_at=1, frequency="WEEKLY", stopped_at=3),),
        decisions=(DECISION,),
    )
    assert decode_user_state(encode_user_state(state)) == state
    page = PageState(page_id="p", blocked_at=1, block_reason="policy")
    assert decode_page_state(encode_page_state(page)) == page


def test_decision_wire_has_every_contract_field() -> None:
    wire = orjson.loads(encode_decision(DECISION))
    contract = {
        "request_id",
        "page_id",
        "user_id",
        "decided_at",
        "allowed",
        "mechanism",
        "tag",
        "reason",
        "detail",
        "rules_version",
        "valid_until",
        "alternatives",
        "duplicate",
    }
    assert contract <= set(wire)


def test_stored_state_leaves_defaults_out() -> None:
    raw = encode_user_state(UserState(page_id="p", user_id="u"))
    assert orjson.loads(raw) == {"p": "p", "u": "u", "v": 1}  # short aliases, defaults left out
    # Full field names are read too, so a state written by hand or by an older writer decodes.
    assert decode_user_state(b'{"page_id":"p","user_id":"u","last_opener_at":5}') == UserState(
        page_id="p", user_id="u", last_opener_at=5
    )


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [
        (b'{"page_id":"p","user_id":"u"}', "request_id", "is required"),
        (b'{"request_id":"","page_id":"p","user_id":"u"}', "request_id", "must not be empty"),
        (b'{"request_id":"r","page_id":"p","user_id":5}', "user_id", "expected a string"),
        (
            b'{"request_id":"r","page_id":"p","user_id":"u","purpose":"spam"}',
            "purpose",
            "expected one of",
        ),
        (
            b'{"request_id":"r","page_id":"p","user_id":"u","send_by":"soon"}',
            "send_by",
            "expected an integer",
        ),
        (
            b'{"request_id":"r","page_id":"p","user_id":"u","send_by":true}',
            "send_by",
            "expected an integer",
        ),
        (
            b'{"request_id":"r","page_id":"p","user_id":"u","message":[1]}',
            "message",
            "expected an object",
        ),
        (b"[1]", "", "expected an object"),
        (b'{"request_id":', "", "not valid JSON"),
    ],
)
def test_bad_requests_name_the_field(raw: bytes, field: str, problem: str) -> None:
    with pytest.raises(SchemaError) as caught:
        decode_request(raw)
    assert caught.value.field == field
    assert problem in str(caught.value)


def test_bad_events_name_the_field() -> None:
    with pytest.raises(SchemaError, match="unknown event kind 'nope'"):
        decode_event(b'{"kind":"nope"}')
    with pytest.raises(SchemaError) as caught:
        decode_event(b'{"kind":"otn_optin","page_id":"p","user_id":"u","timestamp":1,"token":"t"}')
    assert caught.value.field == "topic"
    with pytest.raises(SchemaError) as nested:
        decode_event(
            b'{"kind":"message","page_id":"p","user_id":"u","timestamp":1,"mid":"m","referral":{"source":1}}'
        )
    assert nested.value.field == "referral.source"
    with pytest.raises(SchemaError, match="unsupported wire version"):
        decode_event(
            b'{"v":2,"kind":"read","page_id":"p","user_id":"u","timestamp":1,"watermark":1}'
        )


def test_a_send_request_refuses_an_unknown_field_and_names_it() -> None:
    # Ignored, `purpse` would leave purpose at `auto`: a misspelling must not change the decision.
    with pytest.raises(SchemaError) as caught:
        decode_request(b'{"request_id":"r","page_id":"p","user_id":"u","purpse":"otn","topc":"x"}')
    assert caught.value.field == "purpse"
    assert "unknown field (did you mean 'purpose'?)" in str(caught.value)
    assert "also unknown: topc" in str(caught.value)
    with pytest.raises(SchemaError) as far:
        decode_request(b'{"request_id":"r","page_id":"p","user_id":"u","priority":"high"}')
    assert (far.value.field, "did you mean" in str(far.value)) == ("priority", False)
    with pytest.raises(SchemaError) as nested:
        request_from_wire({"request_id": "r", "page_id": "p", "user_id": "u", "Topic": "t"}, "[3]")
    assert nested.value.field == "[3].Topic"


def test_a_send_request_takes_its_own_wire_version_only() -> None:
    request = SendRequest(request_id="r", page_id="p", user_id="u")
    assert decode_request(encode_request(request)) == request  # encoded with "v": 1
    with pytest.raises(SchemaError, match="unsupported wire version 2") as caught:
        decode_request(b'{"v":2,"request_id":"r","page_id":"p","user_id":"u"}')
    assert caught.value.field == "v"


def test_strictness_is_the_send_requests_alone() -> None:
    """What windowgate writes and replays (events, stored states, decisions) stays readable when
    a newer version added a field; only what callers write is strict."""
    lenient = (*EVENT_TYPES, Decision, Alternative, DecisionRecord, UserState, PageState)
    assert is_strict(SendRequest)
    assert not any(is_strict(t) for t in (*lenient, OtnToken, RecurringToken, Referral))


def test_stored_and_streamed_records_ignore_fields_from_a_newer_version() -> None:
    def newer(raw: bytes) -> bytes:
        return raw[:-1] + b',"added_later":{"x":1}}'

    state = UserState(page_id="p", user_id="u", last_opener_at=1)
    assert decode_user_state(newer(encode_user_state(state))) == state
    page = PageState(page_id="p", blocked_at=1)
    assert decode_page_state(newer(encode_page_state(page))) == page
    assert decode_decision(newer(encode_decision(DECISION))) == DECISION
    record = DecisionRecord(DECISION, {"text": "hi"})
    assert decode_decision_record(newer(encode_decision_record(record))) == record
    for cls in EVENT_TYPES:
        event = _sample_event(cls)
        assert decode_event(newer(encode_event(event))) == event


def test_decision_record_carries_the_message_beside_the_decision() -> None:
    record = DecisionRecord(DECISION, {"text": "back in stock"})
    raw = encode_decision_record(record)
    assert orjson.loads(raw)["message"] == {"text": "back in stock"}
    assert decode_decision_record(raw) == record
    assert decode_decision(raw) == DECISION  # a plain Decision reader still reads it
    with pytest.raises(SchemaError) as caught:
        decode_decision_record(raw.replace(b'{"text":"back in stock"}', b'"text"'))
    assert caught.value.field == "message"


def test_unset_request_fields_stay_off_the_wire() -> None:
    """A field added later (graph_fields) must not reach an older, strict reader unless used."""
    from schemas.request import request_to_wire

    bare = SendRequest(request_id="r", page_id="p", user_id="u")
    wire = request_to_wire(bare)
    assert "graph_fields" not in wire and "message" not in wire
    assert decode_request(encode_request(bare)) == bare
    used = SendRequest(request_id="r", page_id="p", user_id="u", graph_fields={"persona_id": "1"})
    assert request_to_wire(used)["graph_fields"] == {"persona_id": "1"}
