"""The Graph call per mechanism (platform-rules.md §7 and §3, §4)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from schemas.decision import Decision, DecisionRecord
from tests.unit.builders import PAGE, USER, allowed
from windowgate.core.pages import PageConfig
from windowgate.meta.send_api import CannotSend, build_call, rate_class

V = "v25.0"
CONFIG = PageConfig(page_id=PAGE, ad_account_id="act_998877")
TEXT = {"text": "Your order has shipped"}


def body_for(decision: Decision, message: dict[str, Any] | None = TEXT) -> dict[str, Any]:
    call = build_call(DecisionRecord(decision, message), CONFIG, V)
    assert call.path == f"/{V}/{PAGE}/messages"
    return call.body


@pytest.mark.parametrize("mechanism", ["RESPONSE", "UPDATE", "UTILITY"])
def test_window_and_utility(mechanism: str) -> None:
    assert body_for(allowed(mechanism)) == {
        "recipient": {"id": USER},
        "messaging_type": mechanism,
        "message": TEXT,
    }


def test_human_agent_is_a_message_tag() -> None:
    body = body_for(allowed("HUMAN_AGENT", tag="HUMAN_AGENT"))
    assert body["messaging_type"] == "MESSAGE_TAG"
    assert body["tag"] == "HUMAN_AGENT"
    assert body["recipient"] == {"id": USER}


def test_message_tag_carries_its_tag() -> None:
    body = body_for(allowed("MESSAGE_TAG", tag="CUSTOMER_FEEDBACK"))
    assert (body["messaging_type"], body["tag"]) == ("MESSAGE_TAG", "CUSTOMER_FEEDBACK")


def test_message_tag_without_tag_is_refused() -> None:
    with pytest.raises(CannotSend, match="tag"):
        body_for(allowed("MESSAGE_TAG"))


def test_otn_uses_the_token_as_recipient() -> None:
    body = body_for(allowed("OTN", token="otn-1", topic="restock"))
    assert body == {"recipient": {"one_time_notif_token": "otn-1"}, "message": TEXT}


def test_recurring_uses_the_notification_messages_token() -> None:
    body = body_for(allowed("RECURRING", token="rn-1"))
    assert body == {"recipient": {"notification_messages_token": "rn-1"}, "message": TEXT}


@pytest.mark.parametrize("mechanism", ["OTN", "RECURRING", "MARKETING"])
def test_token_mechanisms_need_the_token(mechanism: str) -> None:
    with pytest.raises(CannotSend, match="token"):
        body_for(allowed(mechanism), {"message_id": "c1"})


def test_marketing_goes_to_the_ad_account() -> None:
    decision = allowed("MARKETING", token="mm-1")
    call = build_call(DecisionRecord(decision, {"message_id": "campaign-msg-7"}), CONFIG, V)
    assert call.path == f"/{V}/act_998877/messages"
    assert call.body == {
        "message_id": "campaign-msg-7",
        "messenger_delivery_data": {"subscription_token": "mm-1"},
    }


def test_marketing_accepts_an_account_without_prefix() -> None:
    page = replace(CONFIG, ad_account_id="998877")
    call = build_call(DecisionRecord(allowed("MARKETING", token="t"), {"message_id": "m"}), page, V)
    assert call.path == f"/{V}/act_998877/messages"


def test_marketing_needs_the_campaign_message_and_the_account() -> None:
    with pytest.raises(CannotSend, match="message_id"):
        build_call(DecisionRecord(allowed("MARKETING", token="t"), TEXT), CONFIG, V)
    no_account = replace(CONFIG, ad_account_id=None)
    with pytest.raises(CannotSend, match="ad_account_id"):
        build_call(
            DecisionRecord(allowed("MARKETING", token="t"), {"message_id": "m"}), no_account, V
        )


def test_no_message_or_too_long_text_is_refused_before_the_call() -> None:
    with pytest.raises(CannotSend, match="message: required"):
        body_for(allowed("RESPONSE"), None)
    with pytest.raises(CannotSend, match="2000"):
        body_for(allowed("RESPONSE"), {"text": "x" * 2000})
    assert body_for(allowed("RESPONSE"), {"text": "x" * 1999})["message"]["text"]


def test_unknown_mechanism_is_refused() -> None:
    with pytest.raises(CannotSend):
        body_for(allowed(None))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"text": "hi"}, "text"),
        ({"attachment": {"type": "image", "payload": {}}}, "text"),
        ({"attachment": {"type": "audio", "payload": {}}}, "media"),
        ({"attachment": {"type": "video", "payload": {}}}, "media"),
        ({"attachments": [{"type": "image"}, {"type": "video"}]}, "media"),
        (None, "text"),
    ],
)
def test_rate_class(message: dict[str, Any] | None, expected: str) -> None:
    assert rate_class(message) == expected


def test_rate_class_is_on_the_call() -> None:
    video = {"attachment": {"type": "video", "payload": {"url": "https://x"}}}
    assert build_call(DecisionRecord(allowed("RESPONSE"), video), CONFIG, V).rate_class == "media"
