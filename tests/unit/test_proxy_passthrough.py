"""What the drop-in proxy carries to Graph unchanged (graph_fields), sender actions, and the pages
file's HUMAN_AGENT proof: the pure parts of the proxy's fidelity (issue 14)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.codec import SchemaError
from schemas.decision import (
    DecisionRecord,
    decode_decision_record,
    encode_decision_record,
)
from schemas.request import SendRequest, decode_request, encode_request
from tests.unit.builders import PAGE, T0, USER, H, allowed, message
from tests.unit.test_window_processing import Worker, decisions_of, events_of
from windowgate.core.pages import PageConfig, PagesError, parse_pages
from windowgate.core.rulebook import load_rules
from windowgate.meta.send_api import CannotSend, build_call
from windowgate.offline import OfflineGateway

V = "v25.0"
CONFIG = PageConfig(page_id=PAGE)
EXTRA = {
    "notification_type": "SILENT_PUSH",
    "persona_id": "p1",
    "reply_to": {"mid": "m_0"},
    "metadata": "crm-7",
    "brand_new_field": {"kept": True},
}


def test_the_callers_fields_go_out_unchanged_beside_the_decided_ones() -> None:
    fields = {**EXTRA, "messaging_type": "UPDATE", "recipient": {"id": "someone-else"}}
    record = DecisionRecord(allowed("RESPONSE"), {"text": "hi"}, fields)
    body = build_call(record, CONFIG, V).body
    assert body == {
        **EXTRA,
        "recipient": {"id": USER},  # the decision's, never the caller's
        "messaging_type": "RESPONSE",
        "message": {"text": "hi"},
    }


def test_a_tagged_send_keeps_its_persona_and_the_decided_tag() -> None:
    record = DecisionRecord(allowed("HUMAN_AGENT"), {"text": "hi"}, {"persona_id": "p1"})
    body = build_call(record, CONFIG, V).body
    assert (body["messaging_type"], body["tag"], body["persona_id"]) == (
        "MESSAGE_TAG",
        "HUMAN_AGENT",
        "p1",
    )


@pytest.mark.parametrize("action", ["typing_on", "typing_off", "mark_seen"])
def test_a_sender_action_is_recipient_and_action_only(action: str) -> None:
    record = DecisionRecord(allowed("RESPONSE"), None, {"sender_action": action})
    call = build_call(record, CONFIG, V)
    assert call.body == {"recipient": {"id": USER}, "sender_action": action}
    assert (call.path, call.rate_class) == (f"/{V}/{PAGE}/messages", "text")


def test_a_reaction_keeps_its_payload() -> None:
    fields = {"sender_action": "react", "payload": {"message_id": "m_1", "reaction": "love"}}
    body = build_call(DecisionRecord(allowed("RESPONSE"), None, fields), CONFIG, V).body
    assert body == {"recipient": {"id": USER}, **fields}


def test_a_sender_action_never_rides_a_token() -> None:
    record = DecisionRecord(allowed("OTN", token="T"), None, {"sender_action": "typing_on"})
    with pytest.raises(CannotSend, match="needs the window"):
        build_call(record, CONFIG, V)


def test_graph_fields_cross_the_wire() -> None:
    request = SendRequest(request_id="r", page_id=PAGE, user_id=USER, graph_fields=EXTRA)
    assert decode_request(encode_request(request)).graph_fields == EXTRA
    record = DecisionRecord(allowed("RESPONSE"), {"text": "x"}, EXTRA)
    assert decode_decision_record(encode_decision_record(record)) == record
    plain = DecisionRecord(allowed("RESPONSE"), {"text": "x"})
    assert b"graph_fields" not in encode_decision_record(plain)
    with pytest.raises(SchemaError, match="graph_fields"):
        decode_decision_record(encode_decision_record(plain)[:-1] + b',"graph_fields":[1]}')


def test_pages_file_human_agent_proof() -> None:
    pages = parse_pages(
        {
            "pages": {
                "1": {"human_agent_proof": "persona", "personas": {"p1": "ana@example.com"}},
                "2": {"human_agent_proof": "trust_tag"},
                "3": {},
            }
        }
    )
    assert (pages["1"].human_agent_proof, dict(pages["1"].personas)) == (
        "persona",
        {"p1": "ana@example.com"},
    )
    assert pages["2"].human_agent_proof == "trust_tag"
    assert pages["3"].human_agent_proof == "header"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"human_agent_proof": "vibes"}, "human_agent_proof"),
        ({"human_agent_proof": "persona"}, "personas"),
        ({"personas": {"p1": 3}}, "personas"),
    ],
)
def test_pages_file_human_agent_proof_errors_name_the_field(entry: Any, field: str) -> None:
    with pytest.raises(PagesError) as caught:
        parse_pages({"pages": {"9": entry}})
    assert caught.value.field == f"pages.9.{field}"


# ---- a sender action is decided, never remembered -----------------------------------------------


def typing(request_id: str) -> SendRequest:
    return SendRequest(
        request_id=request_id,
        page_id=PAGE,
        user_id=USER,
        purpose="response",
        graph_fields={"sender_action": "typing_on"},
    )


def test_a_sender_action_is_decided_but_leaves_the_state_alone() -> None:
    worker = Worker()
    worker.event(message(T0, "m-open"))
    before = worker.state()
    result = worker.request(typing("typing-1"))
    [decision] = decisions_of(result)
    assert (result.outcome, decision.allowed, decision.mechanism) == (
        "sender_action",
        True,
        "RESPONSE",
    )
    assert events_of(result) == []  # no RequestDecided: nothing folded, nothing reserved
    assert worker.state() == before
    again = worker.request(typing("typing-1"))  # not remembered: decided again (I5 dedups)
    assert decisions_of(again)[0].duplicate is False
    redelivered = worker.request(typing("typing-1"), offset=0)  # an old offset: not dead-lettered
    assert redelivered.outcome == "sender_action"


def test_a_sender_action_outside_the_window_is_refused() -> None:
    worker = Worker()
    worker.event(message(T0 - 30 * H, "m-old"))
    [refused] = decisions_of(worker.request(typing("typing-2")))
    assert (refused.allowed, refused.reason) == (False, "window_closed")


def test_the_offline_gateway_does_not_remember_a_sender_action() -> None:
    gateway = OfflineGateway(load_rules())
    gateway.apply_events([message(T0, "m-open")])
    assert gateway.decide(typing("t1"), T0 + H).allowed
    assert gateway.users[f"{PAGE}:{USER}"].decisions == ()
    text = SendRequest(request_id="m1", page_id=PAGE, user_id=USER, message={"text": "hi"})
    assert gateway.decide(text, T0 + H).allowed
    assert [d.request_id for d in gateway.users[f"{PAGE}:{USER}"].decisions] == ["m1"]
