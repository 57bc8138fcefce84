"""Asking for permission is a decided send, and "allowed" means sendable (DESIGN.md §4.6; issue 10
point 6, issue 12 point 1): opt-in requests only inside the window, never with a token or a tag,
R-RN-3's weekly limit per user and title from the rules file, and a bad body refused before any
token is reserved."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Event, SendRequest
from schemas.decision import DecisionRecord, decode_decision, encode_decision
from schemas.state import OptinAsk, decode_user_state, encode_user_state
from tests.unit.builders import (
    PAGE,
    T0,
    USER,
    D,
    H,
    decided,
    empty,
    message,
    otn,
    request,
    rn_optin,
)
from tests.unit.test_properties import order_free_events
from windowgate.core.decide import decide
from windowgate.core.fold import REMEMBERED_OPTIN_ASKS, fold, fold_all
from windowgate.core.message import TITLE_LIMIT, message_problem, optin_request
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import RuleBook, RulesError, load_rules, parse_rules
from windowgate.meta.proxy import refusal
from windowgate.meta.send_api import CannotSend, build_call

RULES = load_rules()
HA_PAGE = RULES.with_pages(
    {PAGE: PageConfig(page_id=PAGE, human_agent=True, region="DE", ad_account_id="act_1")}
)


def otn_ask(topic: str = "restock", title: str = "Tell me when it is back") -> dict[str, Any]:
    payload = {"template_type": "one_time_notif_req", "title": title, "payload": topic}
    return {"attachment": {"type": "template", "payload": payload}}


def rn_ask(title: str = "Weekly deals", **extra: Any) -> dict[str, Any]:
    payload = {
        "template_type": "notification_messages",
        "title": title,
        "payload": "weekly-deals",
        "notification_messages_frequency": "WEEKLY",
        **extra,
    }
    return {"attachment": {"type": "template", "payload": payload}}


def in_window(ts: int = T0) -> Any:
    return fold(empty(), message(ts))


def packaged_rules_with(params: dict[str, Any]) -> dict[str, Any]:
    """The packaged rules file's data with R-RN-3's params replaced."""
    data: dict[str, Any] = orjson.loads(
        resources.files("windowgate.core").joinpath("rules/meta.json").read_bytes()
    )
    for rule in data["rules"]:
        if rule["id"] == "R-RN-3":
            rule["params"] = params
    return data


def rules_with(per_title: int, days: int) -> RuleBook:
    return parse_rules(packaged_rules_with({"per_title": per_title, "days": days}))


# ---- recognised, and allowed only inside the window --------------------------------------------


@pytest.mark.parametrize(
    ("body", "rule", "topic"),
    [(otn_ask(), "R-OTN-REQ", "restock"), (rn_ask(), "R-RN-3", "Weekly deals")],
)
def test_an_optin_request_in_the_window_is_a_response(
    body: dict[str, Any], rule: str, topic: str
) -> None:
    allowed = decide(in_window(), request(message=body), T0 + H, RULES)
    assert (allowed.allowed, allowed.mechanism, allowed.reason) == (True, "RESPONSE", "window_open")
    assert (allowed.rule, allowed.topic, allowed.token) == (rule, topic, None)
    assert allowed.optin_request == body["attachment"]["payload"]["template_type"]
    assert allowed.valid_until == T0 + 24 * H  # the window's end, like any window send
    update = decide(in_window(), request(purpose="update", message=body), T0 + H, RULES)
    assert (update.allowed, update.mechanism) == (True, "UPDATE")


@pytest.mark.parametrize(("body", "rule"), [(otn_ask(), "R-OTN-REQ"), (rn_ask(), "R-RN-3")])
def test_outside_the_window_an_optin_request_is_refused_even_with_tokens(
    body: dict[str, Any], rule: str
) -> None:
    """A token for the very topic, a human author, a permitted page: still only the window."""
    state = fold_all(empty(), [message(T0), otn(T0 + H), rn_optin(T0 + H, frequency="DAILY")])
    ask = request(message=body, topic="restock", human_author="agent:claire")
    refused = decide(state, ask, T0 + 25 * H, HA_PAGE)
    assert (refused.allowed, refused.reason) == (False, "optin_request_outside_window")
    assert rule in refused.detail and "window closed" in refused.detail
    assert refused.token is None and refused.alternatives == ()
    assert refused.optin_request is not None  # recognised, so a caller can tell why


@pytest.mark.parametrize(
    "purpose", ["otn", "recurring", "marketing", "tag", "human_agent", "utility"]
)
@pytest.mark.parametrize(("body", "rule"), [(otn_ask(), "R-OTN-REQ"), (rn_ask(), "R-RN-3")])
def test_a_token_tag_or_template_purpose_is_refused_naming_the_rule(
    purpose: str, body: dict[str, Any], rule: str
) -> None:
    state = fold_all(in_window(), [otn(T0), rn_optin(T0, frequency="DAILY")])
    ask = request(
        message=body, purpose=purpose, topic="restock", tag="HUMAN_AGENT", human_author="a"
    )
    refused = decide(state, ask, T0 + H, HA_PAGE)
    assert (refused.allowed, refused.reason, refused.token) == (
        False,
        "optin_request_purpose",
        None,
    )
    assert rule in refused.detail and repr(purpose) in refused.detail
    # What it could be sent as instead: the open window, and nothing that spends a token.
    assert {a.mechanism for a in refused.alternatives} == {"RESPONSE"}
    state = fold(state, decided(refused))
    assert all(t.status == "available" for t in state.otn)
    assert all(t.last_sent_at is None for t in state.recurring)


def test_optin_requests_are_messenger_only() -> None:
    state = fold(empty(platform="instagram"), message(T0, platform="instagram"))
    ask = request(message=otn_ask(), platform="instagram")
    refused = decide(state, ask, T0 + H, RULES)
    assert (refused.allowed, refused.reason) == (False, "platform_unsupported")


def test_a_template_that_asks_nothing_is_an_ordinary_message() -> None:
    generic = {"attachment": {"type": "template", "payload": {"template_type": "generic"}}}
    allowed = decide(in_window(), request(message=generic), T0 + H, RULES)
    assert allowed.allowed and allowed.optin_request is None and allowed.rule == "R-WIN-1"


# ---- R-RN-3: one recurring opt-in request per week per user and title --------------------------


def test_one_recurring_optin_request_per_title_per_week() -> None:
    state = in_window()
    first = decide(state, request("a1", message=rn_ask()), T0 + H, RULES)
    assert first.allowed
    state = fold(state, decided(first))
    assert state.optin_asks == (OptinAsk(T0 + H, "Weekly deals"),)
    state = fold(state, message(T0 + 2 * D, mid="m2"))  # the window is open again days later
    again = decide(state, request("a2", message=rn_ask()), T0 + 2 * D + H, RULES)
    assert (again.allowed, again.reason, again.mechanism) == (
        False,
        "optin_request_limit",
        "RESPONSE",
    )
    assert "R-RN-3" in again.detail and "1 recurring opt-in request(s)" in again.detail
    assert "in 7 days" in again.detail and "2026-05-11T10:00:00" in again.detail
    assert again.alternatives == ()
    other = decide(state, request("a3", message=rn_ask("Flash sales")), T0 + 2 * D + H, RULES)
    assert other.allowed  # per title
    otn_request = decide(state, request("a4", message=otn_ask()), T0 + 2 * D + H, RULES)
    assert otn_request.allowed  # R-RN-3 counts recurring requests only
    state = fold(state, message(T0 + 7 * D, mid="m3"))
    week_later = decide(state, request("a5", message=rn_ask()), T0 + 7 * D + H, RULES)
    assert week_later.allowed  # 7 days after the first, to the millisecond
    just_before = decide(state, request("a6", message=rn_ask()), T0 + 7 * D + H - 1, RULES)
    assert just_before.reason == "optin_request_limit"


def test_the_limit_and_its_period_are_read_from_the_rules() -> None:
    book = rules_with(per_title=2, days=3)
    state = in_window()
    for n in (1, 2):
        decision = decide(state, request(f"a{n}", message=rn_ask()), T0 + n * H, book)
        assert decision.allowed
        state = fold(state, decided(decision))
    third = decide(state, request("a3", message=rn_ask()), T0 + 3 * H, book)
    assert third.reason == "optin_request_limit"
    assert "allows 2 recurring" in third.detail and "in 3 days" in third.detail
    # The count falls below 2 when the first of the last two lapses: T0 + 1 h + 3 days.
    assert "2026-05-07T10:00:00" in third.detail
    later = fold(state, message(T0 + 3 * D, mid="m9"))
    assert decide(later, request("a4", message=rn_ask()), T0 + 3 * D + H, book).allowed


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"per_title": 0, "days": 7}, "R-RN-3.params.per_title"),
        ({"per_title": 1}, "R-RN-3.params.days"),
        ({"per_title": "one", "days": 7}, "R-RN-3.params.per_title"),
    ],
)
def test_a_malformed_limit_is_refused_when_the_rules_load(
    params: dict[str, Any], field: str
) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(packaged_rules_with(params))
    assert caught.value.field == field


def test_only_allowed_recurring_asks_are_remembered_compactly_and_in_any_order() -> None:
    refused = decide(empty(), request("x", message=rn_ask()), T0, RULES)  # window closed
    assert fold(empty(), decided(refused)).optin_asks == ()
    decisions = []
    state = in_window()
    for n in range(REMEMBERED_OPTIN_ASKS + 3):
        decision = decide(state, request(f"a{n}", message=rn_ask(f"title {n}")), T0 + n, RULES)
        assert decision.allowed
        decisions.append(decision)
    events: list[Event] = [decided(d) for d in decisions]
    forwards = fold_all(in_window(), events)
    backwards = fold_all(in_window(), list(reversed(events)) + events)  # and each twice
    assert forwards.optin_asks == backwards.optin_asks
    assert len(forwards.optin_asks) == REMEMBERED_OPTIN_ASKS
    assert forwards.optin_asks[0] == OptinAsk(T0 + 3, "title 3")  # the latest are kept
    assert decode_user_state(encode_user_state(forwards)) == forwards
    assert b'"oq":[{"a":' in encode_user_state(forwards)  # short keys: millions of users


def test_when_every_remembered_ask_is_recent_a_new_title_is_refused_not_guessed() -> None:
    """Past the memory, windowgate cannot know whether a title was asked this week: it refuses."""
    state = fold_all(
        in_window(),
        [
            decided(decide(in_window(), request(f"a{n}", message=rn_ask(f"t{n}")), T0 + n, RULES))
            for n in range(REMEMBERED_OPTIN_ASKS)
        ],
    )
    full = decide(state, request("new", message=rn_ask("brand new")), T0 + H, RULES)
    assert (full.allowed, full.reason) == (False, "optin_request_limit")
    assert f"{REMEMBERED_OPTIN_ASKS} recurring opt-in requests in 7 days" in full.detail


def test_the_decision_carries_the_optin_on_the_wire() -> None:
    decision = decide(in_window(), request(message=rn_ask()), T0 + H, RULES)
    assert decode_decision(encode_decision(decision)) == decision
    assert b'"optin_request":"notification_messages"' in encode_decision(decision)
    plain = decide(in_window(), request(), T0 + H, RULES)
    stored = fold(in_window(), decided(plain))
    assert b"optin_request" not in encode_user_state(stored)  # the state leaves defaults out


# ---- allowed means sendable: one body check, before any token ----------------------------------

BAD_BODIES: list[tuple[Any, str]] = [
    (None, "message: required"),
    ({}, "message: expected a non-empty object"),
    ({"quick_replies": []}, "message: needs one of text, attachment, attachments, template"),
    ({"text": ""}, "message.text: expected a non-empty string"),
    ({"text": "x" * 2000}, "message.text: has 2000 characters"),
    ({"text": "hi", "attachment": {"type": "image"}}, "message: has both text and attachment"),
    ({"attachment": {"payload": {}}}, "message.attachment.type: expected one of"),
    ({"attachment": {"type": "template"}}, "message.attachment.payload: a template"),
    ({"attachments": []}, "message.attachments: expected a non-empty list"),
]
BAD_OPTIN_BODIES: list[tuple[Any, str]] = [
    (
        {"attachment": {"type": "template", "payload": {"template_type": "one_time_notif_req"}}},
        "message.attachment.payload.title: required by a one_time_notif_req template",
    ),
    (otn_ask(topic=""), "message.attachment.payload.payload: required"),
    (
        rn_ask("x" * (TITLE_LIMIT + 1)),
        f"message.attachment.payload.title: has {TITLE_LIMIT + 1} characters",
    ),
]


@pytest.mark.parametrize(("body", "sentence"), BAD_BODIES)
def test_a_bad_body_is_refused_before_any_token_is_reserved(body: Any, sentence: str) -> None:
    """The user holds an OTN token for the topic; the bad request does not take it, the next
    good request for the topic does."""
    state = otn_state = fold_all(empty(), [otn(T0)])  # window closed: only the token could send
    bad = decide(state, request("bad", purpose="otn", topic="restock", message=body), T0 + H, RULES)
    assert (bad.allowed, bad.reason, bad.token) == (False, "invalid_request", None)
    assert bad.detail.startswith(sentence.split(":")[0]) and sentence in bad.detail
    state = fold(state, decided(bad))
    assert state.otn == otn_state.otn and state.otn[0].status == "available"
    good = decide(state, request("good", purpose="otn", topic="restock"), T0 + H, RULES)
    assert (good.allowed, good.token) == (True, "otn-1")


@pytest.mark.parametrize(("body", "sentence"), BAD_OPTIN_BODIES)
def test_a_malformed_optin_request_is_refused_and_not_counted(body: Any, sentence: str) -> None:
    bad = decide(in_window(), request(message=body), T0 + H, RULES)
    assert (bad.allowed, bad.reason, bad.token) == (False, "invalid_request", None)
    assert bad.detail.startswith(sentence) and bad.alternatives == ()
    assert fold(in_window(), decided(bad)).optin_asks == ()


def test_a_marketing_send_needs_its_campaign_before_the_token_is_reserved() -> None:
    us = RULES.with_pages({PAGE: PageConfig(page_id=PAGE, region="US", ad_account_id="act_1")})
    state = fold(empty(), rn_optin(T0, frequency="DAILY"))
    ask = request(purpose="marketing", topic="weekly-deals", message={"text": "Deals"})
    refused = decide(state, ask, T0 + H, us)
    assert (refused.reason, refused.detail) == (
        "invalid_request",
        "message.message_id: a MARKETING send needs the campaign message's id",
    )
    assert fold(state, decided(refused)).recurring[0].last_sent_at is None


@pytest.mark.parametrize(("body", "sentence"), BAD_BODIES + BAD_OPTIN_BODIES)
def test_the_dispatcher_checks_with_the_same_function(body: Any, sentence: str) -> None:
    """A record decided by an older version still meets the check before Graph, same words."""
    allowed = decide(in_window(), request(), T0 + H, RULES)
    with pytest.raises(CannotSend) as caught:
        build_call(DecisionRecord(allowed, body), PageConfig(page_id=PAGE), "v25.0")
    problem = message_problem(body)
    assert problem is not None and caught.value.detail == problem.sentence
    assert sentence in caught.value.detail


def test_every_optin_request_the_core_allows_is_a_call_the_dispatcher_builds() -> None:
    for body in (otn_ask(), rn_ask()):
        allowed = decide(in_window(), request(message=body), T0 + H, RULES)
        call = build_call(DecisionRecord(allowed, body), PageConfig(page_id=PAGE), "v25.0")
        assert call.body == {
            "recipient": {"id": USER},
            "messaging_type": "RESPONSE",
            "message": body,
        }


@pytest.mark.parametrize(
    ("reason", "code", "subcode"),
    [
        ("optin_request_outside_window", 10, 2018278),  # what Meta answers outside the window
        ("optin_request_purpose", 100, None),
        ("optin_request_limit", 10, None),
    ],
)
def test_the_graph_proxy_answers_an_optin_refusal_as_meta_would(
    reason: str, code: int, subcode: int | None
) -> None:
    state = fold_all(empty(), [message(T0), otn(T0)])
    state = fold(state, decided(decide(state, request("a0", message=rn_ask()), T0 + H, RULES)))
    asks = {
        "optin_request_outside_window": (request("o", message=otn_ask()), T0 + 25 * H),
        "optin_request_purpose": (request("p", message=otn_ask(), purpose="otn"), T0 + H),
        "optin_request_limit": (request("l", message=rn_ask()), T0 + 2 * H),
    }
    ask, now = asks[reason]
    decision = decide(state, ask, now, RULES)
    assert decision.reason == reason
    error = refusal(decision)["error"]
    assert (error["code"], error.get("error_subcode")) == (code, subcode)
    assert refusal(decision)["windowgate"]["reason"] == reason


def test_optin_request_is_read_from_the_template_only() -> None:
    assert optin_request({"text": "one_time_notif_req"}) is None
    assert optin_request(None) is None
    found = optin_request(otn_ask("restock", "Back in stock?"))
    assert found is not None and (found.template, found.title, found.key) == (
        "one_time_notif_req",
        "Back in stock?",
        "restock",
    )


# ---- properties --------------------------------------------------------------------------------

PURPOSES = ["auto", "response", "update", "human_agent", "otn", "recurring", "marketing"]
PURPOSES += ["utility", "tag"]


@st.composite
def optin_requests(draw: Any) -> SendRequest:
    body = draw(st.sampled_from([otn_ask(), otn_ask("price-drop"), rn_ask(), rn_ask("Other")]))
    return SendRequest(
        request_id=f"q{draw(st.integers(0, 5))}",
        page_id=PAGE,
        user_id=USER,
        purpose=draw(st.sampled_from(PURPOSES)),
        topic=draw(st.none() | st.sampled_from(["restock", "price-drop", "weekly-deals"])),
        tag=draw(st.none() | st.sampled_from(["HUMAN_AGENT", "ACCOUNT_UPDATE"])),
        human_author=draw(st.none() | st.just("agent@shop")),
        message=body,
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(order_free_events(), max_size=20),
    st.lists(optin_requests(), min_size=1, max_size=6),
    st.integers(min_value=-24 * 400, max_value=24 * 400),
    st.sampled_from([RULES, HA_PAGE]),
)
def test_no_optin_request_is_allowed_outside_the_window_or_with_a_token(
    events: list[Any], asks: list[SendRequest], hours: int, book: RuleBook
) -> None:
    """Whatever the user's tokens and the request's purpose, topic, tag or author: an allowed
    opt-in request is a window send (a plain RESPONSE would be allowed now) carrying no token,
    and folding any of these decisions reserves nothing."""
    state = fold_all(empty(), events)
    now = T0 + hours * H
    for ask in asks:
        decision = decide(state, ask, now, book)
        if decision.allowed and not decision.duplicate:
            assert decision.mechanism in ("RESPONSE", "UPDATE")
            assert decision.token is None and decision.tag is None
            plain = replace(ask, request_id="plain", purpose="response", message={"text": "x"})
            assert decide(state, plain, now, book).allowed
        after = fold(state, decided(decision))
        assert after.otn == state.otn and after.recurring == state.recurring
        state = after
