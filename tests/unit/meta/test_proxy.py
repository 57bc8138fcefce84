"""Meta's Send API body → a windowgate ask; a refusal → the error Meta itself would answer."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.decision import Alternative, Decision
from services.dispatcher.delivery.dispatchlog import Done
from tests.unit.builders import PAGE, T0, USER
from windowgate.core.pages import PageConfig
from windowgate.meta.proxy import (
    ProxyError,
    forwarded,
    graph_param,
    graph_params,
    human_sender,
    parse_body,
    proxy_error,
    refusal,
    unknown_object,
    unproven_note,
)

TEXT = {"text": "hi"}


@pytest.mark.parametrize(
    ("extra", "purpose", "tag"),
    [
        ({"messaging_type": "RESPONSE"}, "response", None),
        ({"messaging_type": "UPDATE"}, "update", None),
        ({"messaging_type": "UTILITY"}, "utility", None),
        ({"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}, "human_agent", "HUMAN_AGENT"),
        ({"messaging_type": "MESSAGE_TAG", "tag": "ACCOUNT_UPDATE"}, "tag", "ACCOUNT_UPDATE"),
        ({}, "auto", None),
    ],
)
def test_messaging_type_to_purpose(extra: dict[str, Any], purpose: str, tag: str | None) -> None:
    ask = parse_body({"recipient": {"id": USER}, "message": TEXT, **extra})
    assert (ask.recipient.user_id, ask.purpose, ask.tag, ask.message) == (USER, purpose, tag, TEXT)


def test_numeric_recipient_id() -> None:
    assert parse_body({"recipient": {"id": 42}, "message": TEXT}).recipient.user_id == "42"


def test_token_recipients() -> None:
    otn = parse_body({"recipient": {"one_time_notif_token": "T"}, "message": TEXT})
    assert (otn.purpose, otn.recipient.otn_token) == ("otn", "T")
    rn = parse_body({"recipient": {"notification_messages_token": "R"}, "message": TEXT})
    assert (rn.purpose, rn.recipient.recurring_token) == ("recurring", "R")


def test_private_reply_and_user_ref_recipients() -> None:
    comment = parse_body({"recipient": {"comment_id": "1111_2222"}, "message": TEXT})
    assert (comment.purpose, comment.recipient.reply_to) == ("auto", "1111_2222")
    post = parse_body({"recipient": {"post_id": 3333}, "message": TEXT})
    assert post.recipient.reply_to == "3333"
    plugin = parse_body(
        {"recipient": {"user_ref": "ref-42"}, "message": TEXT, "messaging_type": "UPDATE"}
    )
    assert (plugin.recipient.user_id, plugin.recipient.user_ref, plugin.purpose) == (
        "ref-42",
        True,
        "update",
    )


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"message": TEXT},
        {"recipient": {"id": USER}},
        {"recipient": {"id": USER}, "message": {}},
        {"recipient": {"comment_id": ""}, "message": TEXT},
        {"recipient": {"id": USER}, "message": TEXT, "messaging_type": "MESSAGE_TAG"},
        {"recipient": {"id": USER}, "message": TEXT, "messaging_type": "NEWS"},
        {"recipient": {"id": USER}, "sender_action": "dance"},
        {"recipient": {"id": USER}, "sender_action": "typing_on", "message": TEXT},
        {"recipient": {"one_time_notif_token": "T"}, "sender_action": "typing_on"},
    ],
)
def test_not_a_message(body: Any) -> None:
    with pytest.raises(ProxyError) as caught:
        parse_body(body)
    assert caught.value.code == 100


def decision(reason: Any, platform: Any = "messenger", **kw: Any) -> Decision:
    return Decision(
        request_id="r1",
        page_id=PAGE,
        user_id=USER,
        decided_at=T0,
        allowed=False,
        reason=reason,
        detail=f"because {reason}",
        rules_version="2026-11-24",
        platform=platform,
        **kw,
    )


def test_closed_window_is_meta_10_2018278_plus_the_reason() -> None:
    alt = Alternative(mechanism="OTN", detail="a token", topic="restock")
    body = refusal(decision("window_closed", alternatives=(alt,)))
    error = body["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (10, 2018278, "OAuthException")
    assert error["message"].startswith("(#10) ") and error["fbtrace_id"]
    assert body["windowgate"]["reason"] == "window_closed"
    assert body["windowgate"]["detail"] == "because window_closed"
    assert body["windowgate"]["alternatives"][0]["topic"] == "restock"


def test_instagram_window_uses_instagram_subcode() -> None:
    assert refusal(decision("window_closed", "instagram"))["error"]["error_subcode"] == 2534022


@pytest.mark.parametrize(
    ("reason", "code", "subcode"),
    [
        ("user_unavailable", 551, 1545041),
        ("opted_out", 10, 1893015),
        ("tag_retired", 100, None),
        ("token_spent", 100, None),
        ("human_agent_not_permitted", 10, 2018278),
        ("human_author_missing", 10, 2018278),
        ("token_not_found", 100, None),
        ("private_reply_used", 10, None),
        ("private_reply_expired", 10, None),
        ("mechanism_ended", 10, None),
    ],
)
def test_refusal_codes(reason: str, code: int, subcode: int | None) -> None:
    error = refusal(decision(reason))["error"]
    assert error["code"] == code and error.get("error_subcode") == subcode


def done(status: Any, **kw: Any) -> Done:
    return Done(request_id="r1", page_id=PAGE, user_id=USER, at=T0, status=status, **kw)


def test_forwarded_returns_metas_own_answer() -> None:
    meta = {"recipient_id": USER, "message_id": "m_1"}
    assert forwarded(done("sent", graph_status=200, graph_body=meta)) == (200, meta)
    error = {"error": {"code": 551, "error_subcode": 1545041, "message": "x"}}
    assert forwarded(done("failed", graph_status=400, graph_body=error)) == (400, error)


def test_forwarded_without_metas_answer() -> None:
    status, body = forwarded(done("unknown", detail="timed out"))
    assert status == 400 and body["error"]["code"] == 2  # not 5xx: no SDK retries it
    assert body["error"]["is_transient"] is False
    assert "may have been delivered" in body["error"]["message"]
    assert "Idempotency-Key: r1" in body["error"]["message"]
    assert body["windowgate"]["reason"] == "delivery_unknown"
    status, body = forwarded(done("failed", detail="expired"))
    assert status == 400 and body["windowgate"]["detail"] == "expired"


def test_an_ambiguous_5xx_is_never_handed_back_as_a_5xx() -> None:
    """Meta's 500 after the body left: the send may have happened; Meta's body rides along."""
    meta = {"error": {"code": 2, "message": "An unexpected error has occurred."}}
    status, body = forwarded(done("unknown", graph_status=500, graph_body=meta, detail="5xx"))
    assert status == 400 and body["error"]["is_transient"] is False
    assert body["windowgate"]["graph_answer"] == meta


def test_sender_actions_are_window_sends_with_their_fields() -> None:
    typing = parse_body({"recipient": {"id": USER}, "sender_action": "typing_on"})
    assert (typing.purpose, typing.message, typing.sender_action) == ("response", None, "typing_on")
    react = parse_body(
        {
            "recipient": {"id": 42},
            "sender_action": "react",
            "payload": {"message_id": "m_1", "reaction": "love"},
        }
    )
    assert react.recipient.user_id == "42"
    assert react.graph_fields == {
        "sender_action": "react",
        "payload": {"message_id": "m_1", "reaction": "love"},
    }


def test_every_field_windowgate_does_not_set_is_carried() -> None:
    body = {
        "recipient": {"id": USER},
        "messaging_type": "RESPONSE",
        "message": TEXT,
        "access_token": "secret",
        "notification_type": "SILENT_PUSH",
        "persona_id": "p1",
        "reply_to": {"mid": "m_0"},
        "metadata": "crm-7",
        "brand_new_field": [1, 2],
    }
    assert parse_body(body).graph_fields == {
        "notification_type": "SILENT_PUSH",
        "persona_id": "p1",
        "reply_to": {"mid": "m_0"},
        "metadata": "crm-7",
        "brand_new_field": [1, 2],
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{'id':'1254459154682919'}", {"id": "1254459154682919"}),  # Meta's curl samples
        ('{"id": "1", "x": true}', {"id": "1", "x": True}),
        ("{'text':'hello, world!'}", {"text": "hello, world!"}),
    ],
)
def test_form_objects_as_json_or_metas_single_quotes(value: str, expected: Any) -> None:
    assert graph_param("recipient", value) == expected


@pytest.mark.parametrize("value", ["[1]", "{'a': (1, 2)}", "{'a': b'x'}", "nope", "{1: 2}"])
def test_form_objects_that_json_cannot_carry_are_refused(value: str) -> None:
    with pytest.raises(ProxyError) as caught:
        graph_param("message", value)
    assert caught.value.code == 100 and "message" in caught.value.detail


def test_plain_params_stay_strings_and_the_body_wins_over_the_query() -> None:
    params = graph_params(
        {"metadata": "{'a': 1}", "messaging_type": "UPDATE"}, {"messaging_type": "RESPONSE"}
    )
    assert params == {"metadata": "{'a': 1}", "messaging_type": "RESPONSE"}


HA = {
    "recipient": {"id": USER},
    "messaging_type": "MESSAGE_TAG",
    "tag": "HUMAN_AGENT",
    "message": TEXT,
    "persona_id": "p-ana",
}


@pytest.mark.parametrize(
    ("proof", "header", "expected"),
    [
        ("header", "ana", "ana"),
        ("header", None, None),
        ("persona", None, "ana@example.com"),
        ("persona", "bo", "bo"),  # the header is explicit under every setting
        ("trust_tag", None, f"a human of page {PAGE} (the page's own HUMAN_AGENT tag)"),
    ],
)
def test_human_agent_proof_by_the_pages_choice(
    proof: Any, header: str | None, expected: str | None
) -> None:
    page = PageConfig(page_id=PAGE, human_agent_proof=proof, personas={"p-ana": "ana@example.com"})
    assert human_sender(parse_body(HA), page, header) == expected


def test_an_unknown_persona_is_no_proof() -> None:
    page = PageConfig(page_id=PAGE, human_agent_proof="persona", personas={"p-bo": "bo"})
    assert human_sender(parse_body(HA), page, None) is None
    assert "persona_id listed in the page's personas" in unproven_note(page)


def test_unknown_object_is_graphs_100_33() -> None:
    error = proxy_error(unknown_object("999"), "t")["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (
        100,
        33,
        "GraphMethodException",
    )
