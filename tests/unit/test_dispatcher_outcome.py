"""What the dispatcher folds back: one SendOutcome, the token's fate, Meta's fact (I2-safe)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.events import (
    PageRestricted,
    SendOutcome,
    ThreadControl,
    TokenOptedOut,
    TokenOutcomeUnknown,
    TokenReleased,
    TokenSpent,
    UserUnavailable,
    WindowClosedByMeta,
)
from schemas.state import PageState
from services.dispatcher.delivery.dispatchlog import Attempt
from services.dispatcher.delivery.outcome import not_sent, settle, token_taken, unknown_after_crash
from tests.unit.builders import PAGE, T0, USER, allowed, decided, empty, otn, rn_optin
from windowgate.core.fold import fold, fold_page
from windowgate.meta.graph_errors import classify, classify_transport

NOW = T0 + 1000


def attempt(token: str | None = "otn-1", mechanism: Any = "OTN") -> Attempt:
    return Attempt(
        request_id="r1", page_id=PAGE, user_id=USER, at=T0, mechanism=mechanism, token=token
    )


def err(code: int, subcode: int | None = None, message: str = "x") -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if subcode is not None:
        body["error_subcode"] = subcode
    return {"error": body}


def kinds(events: tuple[Any, ...]) -> list[type]:
    return [type(e) for e in events]


def test_success_spends_the_token() -> None:
    verdict = classify(200, {"recipient_id": USER, "message_id": "m_1"})
    s = settle(attempt(), verdict, NOW, graph_status=200, graph_body={"message_id": "m_1"})
    assert kinds(s.events) == [SendOutcome, TokenSpent]
    outcome = s.events[0]
    assert isinstance(outcome, SendOutcome)
    assert (outcome.status, outcome.message_id, outcome.request_id) == ("sent", "m_1", "r1")
    assert (s.done.status, s.done.message_id, s.done.graph_status) == ("sent", "m_1", 200)


def test_window_mechanisms_have_no_token_event() -> None:
    s = settle(attempt(None, "RESPONSE"), classify(200, {"message_id": "m"}), NOW)
    assert kinds(s.events) == [SendOutcome]


@pytest.mark.parametrize(
    ("body", "fact", "token_event"),
    [
        (err(10, 2018278), WindowClosedByMeta, None),
        (err(551, 1545041), UserUnavailable, None),
        (err(10, 1893063), PageRestricted, None),
        (err(190), PageRestricted, TokenReleased),
        (err(10, 2018300), ThreadControl, None),
        (err(10, 1893015), None, TokenOptedOut),
        (err(100), None, None),
        (err(613, 2534040), None, TokenReleased),
    ],
)
def test_errors_fold_back_as_facts(body: Any, fact: type | None, token_event: type | None) -> None:
    s = settle(attempt(), classify(400, body), NOW, graph_status=400, graph_body=body)
    expected = [SendOutcome, *(t for t in (token_event, fact) if t is not None)]
    assert kinds(s.events) == expected
    assert s.done.status == "failed"
    assert s.done.error_code == body["error"]["code"]
    assert s.done.graph_body == body


def test_page_wide_fact_is_keyed_by_the_page() -> None:
    s = settle(attempt(), classify(400, err(10, 1893063)), NOW)
    [restricted] = [e for e in s.events if isinstance(e, PageRestricted)]
    assert restricted.user_id == "" and restricted.key == f"{PAGE}:"
    assert fold_page(PageState(page_id=PAGE), restricted).restricted


def test_ambiguous_answer_is_unknown_and_never_reusable() -> None:
    s = settle(attempt(), classify_transport("timeout", "t"), NOW)
    assert kinds(s.events) == [SendOutcome, TokenOutcomeUnknown]
    assert s.done.status == "unknown"
    state = fold(empty(), otn(T0 - 1000, "otn-1"))
    for event in s.events:
        state = fold(state, event)
    assert state.otn[0].status == "unknown"


def test_not_sent_releases_the_token() -> None:
    s = not_sent(attempt(), NOW, "expired")
    assert kinds(s.events) == [SendOutcome, TokenReleased]
    assert s.done.status == "failed" and s.done.detail == "expired" and s.done.calls == 0
    assert s.released is not None
    assert (s.released.request_id, s.released.token, s.released.released) == ("r1", "otn-1", True)


def test_only_a_token_given_back_is_released_in_the_log() -> None:
    rate_limited = classify(400, err(613, 2534040))
    assert settle(attempt(), rate_limited, NOW).released is not None
    assert settle(attempt(), classify(200, {"message_id": "m"}), NOW).released is None
    assert settle(attempt(), classify(400, err(10, 2018278)), NOW).released is None  # kept
    assert unknown_after_crash(attempt(), NOW).released is None
    assert not_sent(attempt(None, "RESPONSE"), NOW, "expired").released is None


def test_a_token_taken_by_another_request_is_left_to_its_holder() -> None:
    s = token_taken(attempt(), NOW, "r0")
    assert kinds(s.events) == [SendOutcome]
    assert (s.done.status, s.done.calls, s.released) == ("failed", 0, None)
    assert "token already attempted by request r0" in (s.done.detail or "")
    # the holder's reservation survives what the refused request folds back
    reserved = decided(allowed("OTN", "r0", reason="otn_token", token="otn-1", topic="restock"))
    state = fold(fold(empty(), otn(T0 - 1000, "otn-1")), reserved)
    for event in s.events:
        state = fold(state, event)
    assert (state.otn[0].status, state.otn[0].request_id) == ("reserved", "r0")


def test_unknown_after_crash() -> None:
    s = unknown_after_crash(attempt(), NOW)
    assert kinds(s.events) == [SendOutcome, TokenOutcomeUnknown]
    assert s.done.status == "unknown"
    assert "not resent" in (s.done.detail or "")


def test_events_are_idempotent_when_published_twice() -> None:
    """A crash can make the same settlement be published again: the fold must not care (I2)."""
    state = fold(fold(empty(), otn(T0 - 1000, "otn-1")), rn_optin(T0 - 1000, "rn-1"))
    s = settle(attempt(), classify(200, {"message_id": "m"}), NOW)
    once = state
    for event in s.events:
        once = fold(once, event)
    twice = once
    for event in s.events:
        twice = fold(twice, event)
    assert once == twice
    assert {e.dedup_key for e in s.events} == {
        "dispatch:r1:outcome",
        "dispatch:r1:spend",
    }


def test_events_carry_the_user_key_and_time() -> None:
    s = settle(attempt(), classify(400, err(551, 1545041)), NOW)
    for event in s.events:
        assert event.key == f"{PAGE}:{USER}"
        assert event.timestamp == NOW
