"""Opt-in requests and bad bodies through the real stack (broker, window worker, dispatcher, Graph
stand-in) decide exactly as the offline gateway does, and what is refused never reaches Graph or
takes a token (DESIGN.md §4.6; issue 10 point 6)."""

from __future__ import annotations

from typing import Any

from devtools.devbroker import unique_name
from schemas.decision import decision_to_wire
from schemas.events import Event, MessageReceived, OtnOptin
from schemas.request import request_from_wire
from services.common.runtime import now_ms
from tests.integration.dispatcher_kit import HOUR, PAGE_EU, publish_events, rules
from tests.integration.test_dispatcher_window import Stack, stack, until_state
from windowgate.offline import OfflineGateway

__all__ = ["stack"]  # the end-to-end stack fixture, shared with test_dispatcher_window


def _ask(template: str, title: str, topic: str) -> dict[str, Any]:
    payload = {"template_type": template, "title": title, "payload": topic}
    return {"attachment": {"type": "template", "payload": payload}}


async def test_optin_requests_and_bad_bodies_decide_as_offline(stack: Stack) -> None:
    user, token = unique_name("u"), unique_name("otn")
    events: list[Event] = [
        OtnOptin(
            page_id=PAGE_EU,
            user_id=user,
            timestamp=now_ms() - 2 * HOUR,
            token=token,
            topic="restock",
        ),
        MessageReceived(page_id=PAGE_EU, user_id=user, timestamp=now_ms() - HOUR, mid="m1"),
    ]
    await publish_events(stack.bootstrap, stack.topics.events, events)
    await until_state(stack, user, lambda s: s["state"].get("last_opener_at") is not None)
    offline = OfflineGateway(rules())
    offline.apply_events(events)

    base = {"page_id": PAGE_EU, "user_id": user}
    weekly = _ask("notification_messages", "Weekly deals", "weekly-deals")
    otn_ask = _ask("one_time_notif_req", "Back in stock?", "restock")
    otn: dict[str, Any] = {"purpose": "otn", "topic": "restock"}
    steps: list[tuple[dict[str, Any], bool, str]] = [
        # a bad body asking for the token: refused before the token is reserved
        ({**otn, "message": {"text": ""}}, False, "invalid_request"),
        # asking for permission with a token: refused, naming the rule
        ({**otn, "message": otn_ask}, False, "optin_request_purpose"),
        # inside the window: a RESPONSE, sent
        ({"message": weekly}, True, "window_open"),
        # the same title again within the week: R-RN-3
        ({"message": weekly}, False, "optin_request_limit"),
        # the token the bad body did not take
        ({**otn, "message": {"text": f"back {token}"}}, True, "otn_token"),
    ]  # fmt: skip
    answers = []
    for fields, allowed, reason in steps:
        body = {"request_id": unique_name("r"), **base, **fields}
        status, answer = await stack.post(body)
        assert status == 200, answer
        assert (answer["allowed"], answer["reason"]) == (allowed, reason), answer
        expected = offline.decide(request_from_wire(body), answer["decided_at"])
        delivery = answer.pop("delivery", None)
        assert answer == decision_to_wire(expected)  # the same decision, field for field
        answers.append((answer, delivery))

    bad, wrong_purpose, asked, limited, spent = answers
    assert bad[0]["detail"] == "message.text: expected a non-empty string"
    assert "R-OTN-REQ" in wrong_purpose[0]["detail"]
    assert "R-RN-3" in limited[0]["detail"] and "in 7 days" in limited[0]["detail"]
    assert (asked[0]["optin_request"], asked[0]["topic"]) == (
        "notification_messages",
        "Weekly deals",
    )
    assert asked[1] is not None and asked[1]["status"] == "sent"
    assert spent[0]["token"] == token and spent[1]["status"] == "sent"
    to_user = [c for c in stack.standin.calls if c.recipient.get("id") == user]
    assert [c.body["message"] for c in to_user] == [weekly]  # only the allowed ask, once
    assert stack.standin.token_uses()[token] == 1
    await until_state(
        stack,
        user,
        lambda s: [a.get("title") for a in s["state"].get("optin_asks", [])] == ["Weekly deals"],
    )
