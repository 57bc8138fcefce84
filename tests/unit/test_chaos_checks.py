"""The fault test's checks count what they should: a harness that never fails proves nothing."""

from __future__ import annotations

from typing import Any

import orjson

from bench.chaos.checks import (
    check_broadcast,
    check_decisions,
    check_graph,
    check_webhooks,
    event_id,
)
from bench.chaos.traffic import BROADCAST_PREFIX, TEXT_PREFIX, Body, Ledger, Request
from devtools.graph_standin import Call
from schemas.broadcast import recipient_request_id
from schemas.decision import Decision
from windowgate.core.timeconst import HOUR_MS
from windowgate.meta.normalise import normalise

PAGE = "682498171943165"
USER = "1254459154682919"
NOW = 1_796_000_000_000


def body(*elements: dict[str, Any], status: int = 200) -> Body:
    envelope = {"object": "page", "entry": [{"id": PAGE, "time": NOW, "messaging": list(elements)}]}
    return Body(orjson.dumps(envelope), normalise(envelope).events, [status])


def message(ts: int, mid: str) -> dict[str, Any]:
    return {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": ts,
        "message": {"mid": mid, "text": "hi"},
    }


def optin(token: str, ts: int = NOW) -> dict[str, Any]:
    return {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": ts,
        "optin": {"type": "one_time_notif_req", "payload": "t", "one_time_notif_token": token},
    }


def decision(request_id: str, allowed: bool, **kw: Any) -> Decision:
    return Decision(
        request_id=request_id,
        page_id=PAGE,
        user_id=USER,
        decided_at=NOW,
        allowed=allowed,
        reason=kw.pop("reason", "window_open" if allowed else "window_closed"),
        detail="",
        rules_version="1",
        mechanism=kw.pop("mechanism", "RESPONSE"),
        **kw,
    )


def call(request_id: str, at_ms: int, recipient: dict[str, Any], **body: Any) -> Call:
    payload = {"recipient": recipient, "message": {"text": TEXT_PREFIX + request_id}, **body}
    return Call(at_ms / 1000, "/v25.0/me/messages", PAGE, payload, 200, {}, "ok")


def test_an_accepted_event_missing_from_the_topic_or_the_state_is_lost() -> None:
    ledger = Ledger(bodies=[body(message(NOW, "m1"), optin("tok-1")), body(message(NOW, "m2"))])
    first, second = ledger.bodies
    in_topic = {event_id(e) for e in first.events} | {event_id(e) for e in second.events}
    state = {"last_message_at": NOW, "otn": [{"token": "tok-1", "status": "spent"}]}
    found = check_webhooks(ledger, in_topic, {(PAGE, USER): state})
    assert found.lost.count == 0

    stale = {"last_message_at": NOW - 1, "otn": []}
    found = check_webhooks(ledger, in_topic - {event_id(second.events[0])}, {(PAGE, USER): stale})
    assert found.lost.count == 2
    assert found.missing_in_topic.count == 1  # m2
    assert found.missing_in_state.count == 2  # m1 older than the state's maximum, tok-1 unknown


def test_a_refused_body_is_not_checked() -> None:
    ledger = Ledger(bodies=[body(message(NOW, "m1"), status=503)])
    assert check_webhooks(ledger, set(), {(PAGE, USER): None}).lost.count == 0


def test_requests_need_one_decision_and_duplicates_agree() -> None:
    ledger = Ledger(
        requests={
            rid: Request({"request_id": rid}, statuses=[200])
            for rid in ("ok", "none", "twice", "dup")
        }
    )
    ledger.requests["ok"].answers.append({"allowed": True, "mechanism": "RESPONSE",
                                          "token": None, "reason": "window_open"})  # fmt: skip
    decisions = {
        "ok": [decision("ok", True)],
        "twice": [decision("twice", False), decision("twice", True)],
        "dup": [decision("dup", True), decision("dup", False, duplicate=True)],
    }
    found = check_decisions(ledger, decisions)
    assert found.no_decision.count == 1
    assert found.conflicting.count == 1
    assert found.without_one.count == 2
    assert found.answer_mismatch.count == 0


def test_graph_calls_twice_and_against_the_rules_are_counted() -> None:
    ledger = Ledger(bodies=[body(message(NOW - 30 * HOUR_MS, "old")), body(optin("granted"))])
    decisions = {
        rid: [decision(rid, True)] for rid in ("closed", "otn-a", "otn-b", "stranger", "again")
    }
    later = NOW + HOUR_MS
    calls = [
        call("closed", later, {"id": USER}, messaging_type="RESPONSE"),  # no message in 24 h
        call("otn-a", later, {"one_time_notif_token": "granted"}),
        call("otn-b", later, {"one_time_notif_token": "granted"}),  # the token a second time
        call("stranger", later, {"one_time_notif_token": "never-granted"}),
        call("again", later, {"id": USER}, messaging_type="RESPONSE"),
        call("again", later, {"id": USER}, messaging_type="RESPONSE"),
        call("undecided", later, {"id": USER}, messaging_type="RESPONSE"),
    ]
    found = check_graph(calls, ledger, decisions, wall_offset_s=0.0)
    assert found.tokens_twice.count == 1
    assert found.requests_twice.count == 1
    # closed, stranger, again ×2 (the old message is 30 h before), undecided
    assert found.forbidden.count == 5

    fresh = Ledger(bodies=[body(message(later - HOUR_MS, "new"))])
    ok = check_graph([calls[0]], fresh, decisions, wall_offset_s=0.0)
    assert ok.forbidden.count == 0


def broadcast_call(broadcast_id: str, at_ms: int, recipient: dict[str, Any]) -> Call:
    payload = {"recipient": recipient, "message": {"text": BROADCAST_PREFIX + broadcast_id}}
    return Call(at_ms / 1000, "/v25.0/me/messages", PAGE, payload, 200, {}, "ok")


def test_a_broadcast_recipient_decided_or_messaged_twice_is_counted() -> None:
    ledger = Ledger(bodies=[body(optin("tok-1", NOW - HOUR_MS))])
    rid = recipient_request_id("bc1", USER)
    decisions = {rid: [decision(rid, True, mechanism="OTN", reason="otn_token", token="tok-1")]}
    once = [broadcast_call("bc1", NOW, {"one_time_notif_token": "tok-1"})]
    clean = check_broadcast("bc1", decisions, once, ledger)
    assert (clean.recipients, clean.graph_calls) == (1, 1)
    assert (clean.decided_twice.count, clean.messaged_twice.count) == (0, 0)
    graph = check_graph(once, ledger, decisions, wall_offset_s=0.0)
    assert graph.forbidden.count == 0  # the call maps to the recipient's allowed decision
    twice = once * 2
    again = {rid: decisions[rid] * 2}
    found = check_broadcast("bc1", again, twice, ledger)
    assert (found.decided_twice.count, found.messaged_twice.count) == (1, 1)
    assert check_graph(twice, ledger, decisions, wall_offset_s=0.0).requests_twice.count == 1
