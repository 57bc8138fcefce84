"""OfflineGateway: webhooks folded per user and per page, decisions recorded, tokens spent once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.events import event_key
from schemas.request import SendRequest
from schemas.state import PageState, UserState
from tests import fixtures_path
from windowgate.core.rulebook import load_rules
from windowgate.core.timeconst import DAY_MS, HOUR_MS
from windowgate.core.timestamps import parse_iso_ms
from windowgate.meta.normalise import EnvelopeError
from windowgate.offline import Applied, OfflineGateway

PAGE = "682498171943165"
USER = "1254459154682919"
T01 = 1502905976377
T09 = 1458692752478
T10 = 1700000000000  # fixture 10's recurring opt-in (timestamp given as a string)


def fixture(name: str) -> Any:
    return orjson.loads(fixtures_path.fixture_bytes("meta-webhooks", name))


def req(request_id: str, **fields: Any) -> SendRequest:
    fields.setdefault("message", {"text": "hello"})
    return SendRequest(request_id=request_id, page_id=PAGE, user_id=USER, **fields)


@pytest.fixture
def gateway() -> OfflineGateway:
    return OfflineGateway(load_rules())


def test_webhooks_fold_into_one_state_per_user_and_page(gateway: OfflineGateway) -> None:
    assert gateway.apply_webhook(fixture("14-batch-two-entries.json")) == Applied()
    assert set(gateway.users) == {
        event_key(PAGE, USER),
        event_key("542998526103632", "5794982867201265"),
    }
    second = gateway.state("542998526103632", "5794982867201265")
    assert second is not None
    assert second.last_opener_at == 1502905976390  # the postback after the message
    assert gateway.pages == {}


def test_page_wide_events_go_to_the_page_state(gateway: OfflineGateway) -> None:
    gateway.apply_webhook(fixture("12-policy-enforcement-block.json"))
    assert gateway.users == {}
    page = gateway.page_state(PAGE)
    assert isinstance(page, PageState)
    assert page.restricted
    gateway.apply_webhook(fixture("01-quick-reply.json"))
    decision = gateway.decide(req("r1"), T01 + HOUR_MS)
    assert decision.reason == "page_restricted"


def test_unsupported_elements_are_returned_and_the_rest_is_folded(
    gateway: OfflineGateway,
) -> None:
    body = fixture("01-quick-reply.json")
    body["entry"].append({"id": PAGE, "time": T01, "changes": [{"field": "feed"}]})
    applied = gateway.apply_webhook(body)
    assert [u.path for u in applied.unsupported] == ["entry[1].changes[0]"]
    state = gateway.state(PAGE, USER)
    assert state is not None
    assert state.last_opener_at == T01


def test_events_later_than_now_are_handed_back_not_folded(gateway: OfflineGateway) -> None:
    # Fixture 14: a message to PAGE at t14, then a message and a postback to PAGE_2 at +1, +13 ms.
    body = fixture("14-batch-two-entries.json")
    t14 = 1502905976377
    applied = gateway.apply_webhook(body, now=t14 + 1)
    assert applied.unsupported == ()
    assert [(e.KIND, e.timestamp) for e in applied.later] == [("postback", t14 + 13)]
    page_2 = gateway.users[event_key("542998526103632", "5794982867201265")]
    assert page_2.last_opener_at == t14 + 1  # at `now` exactly: folded; after it: not
    assert gateway.state(PAGE, USER) is not None

    # The user acted after `now`: deciding at `now` must not see that act.
    fresh = OfflineGateway(load_rules())
    later = fresh.apply_webhook(fixture("01-quick-reply.json"), now=T01 - 1).later
    assert [e.timestamp for e in later] == [T01]
    assert fresh.state(PAGE, USER) is None
    assert fresh.decide(req("r1"), T01 - 1).reason == "window_closed"


def test_without_now_every_event_is_folded(gateway: OfflineGateway) -> None:
    assert gateway.apply_webhook(fixture("01-quick-reply.json")).later == ()
    assert gateway.state(PAGE, USER) is not None


def test_a_bad_envelope_raises_and_folds_nothing(gateway: OfflineGateway) -> None:
    with pytest.raises(EnvelopeError) as caught:
        gateway.apply_webhook({"object": "user", "entry": []})
    assert caught.value.field == "object"
    assert gateway.users == {}
    assert gateway.pages == {}


def test_an_unknown_user_is_decided_against_an_empty_state_and_remembered(
    gateway: OfflineGateway,
) -> None:
    decision = gateway.decide(req("r1", platform="instagram"), T01)
    assert decision.allowed is False
    assert decision.reason == "window_closed"
    state = gateway.state(PAGE, USER)
    assert state == UserState(
        page_id=PAGE, user_id=USER, platform="instagram", decisions=(decision,)
    )


def test_an_allowed_otn_decision_spends_its_token(gateway: OfflineGateway) -> None:
    gateway.apply_webhook(fixture("09-otn-optin.json"))
    now = T09 + DAY_MS
    decision = gateway.decide(req("r1", purpose="otn", topic="back-in-stock:adidas-sl72"), now)
    assert (decision.allowed, decision.mechanism, decision.token) == (True, "OTN", "otn-token-0001")
    state = gateway.state(PAGE, USER)
    assert state is not None
    [token] = state.otn
    assert token.status == "spent"  # offline, an allowed token use is a sent message
    assert token.request_id == "r1"
    assert state.decisions[-1].decided_at == now  # the internal events carry `now`
    again = gateway.decide(req("r2", purpose="otn", topic="back-in-stock:adidas-sl72"), now)
    assert again.reason == "token_spent"


def test_two_tokens_serve_two_messages_then_none(gateway: OfflineGateway) -> None:
    first = fixture("09-otn-optin.json")
    second = fixture("09-otn-optin.json")
    element = second["entry"][0]["messaging"][0]
    element["optin"]["one_time_notif_token"] = "otn-token-0002"
    element["timestamp"] += 1000
    gateway.apply_webhook(first)
    gateway.apply_webhook(second)
    otn = {"purpose": "otn", "topic": "back-in-stock:adidas-sl72"}
    decisions = [gateway.decide(req(f"r{i}", **otn), T09 + DAY_MS) for i in range(3)]
    assert [d.token for d in decisions] == ["otn-token-0001", "otn-token-0002", None]
    assert decisions[2].reason == "token_spent"


def test_a_duplicate_changes_nothing(gateway: OfflineGateway) -> None:
    gateway.apply_webhook(fixture("09-otn-optin.json"))
    otn = {"purpose": "otn", "topic": "back-in-stock:adidas-sl72"}
    first = gateway.decide(req("r1", **otn), T09 + DAY_MS)
    state = gateway.state(PAGE, USER)
    repeat = gateway.decide(req("r1", **otn), T09 + 2 * DAY_MS)
    assert repeat.duplicate is True
    assert repeat == first.as_duplicate()
    assert gateway.state(PAGE, USER) is state


def test_a_recurring_token_is_used_then_cools_down(gateway: OfflineGateway) -> None:
    gateway.apply_webhook(fixture("10-rn-optin.json"))
    now = T10 + DAY_MS
    first = gateway.decide(req("r1", purpose="recurring", topic="weekly-deals"), now)
    assert (first.allowed, first.mechanism, first.token) == (True, "RECURRING", "rn-token-0001")
    state = gateway.state(PAGE, USER)
    assert state is not None
    assert state.recurring[0].last_sent_at == now
    soon = gateway.decide(req("r2", purpose="recurring", topic="weekly-deals"), now + HOUR_MS)
    assert soon.reason == "cooldown"
    # fixture 11: the user stops the notifications
    gateway.apply_webhook(fixture("11-rn-stop-space-spelling.json"))
    later = gateway.decide(req("r3", purpose="recurring", topic="weekly-deals"), now + 10 * DAY_MS)
    assert later.reason == "opted_out"


def test_recurring_notifications_ended_on_2026_02_10(gateway: OfflineGateway) -> None:
    gateway.apply_webhook(fixture("10-rn-optin.json"))
    after = gateway.decide(
        req("r1", purpose="recurring", topic="weekly-deals"), parse_iso_ms("2026-02-11")
    )
    assert after.allowed is False
    assert after.reason == "mechanism_ended"


def test_the_demo_timeline_tells_the_truth(capsys: pytest.CaptureFixture[str]) -> None:
    """`make run` (without the broker): every row's answer is the core's, in time order."""
    from devtools import demo

    assert demo.main([]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit() and ("allowed" in cells or "refused" in cells):
            rows[int(cells[0])] = line
    assert len(rows) == len(demo.STEPS)
    expected = {
        1: "page_restricted",
        2: "thread_owned_by_other_app",
        3: "otn_token",
        4: "token_spent",
        5: "allowed (dup)",
        6: "window_open",
        7: "window_closed",
        8: "human_agent_window",
        10: "recurring_token",
        11: "opted_out",
        12: "mechanism_ended",
        13: "message_tag",
        14: "tag_retired",
    }
    for number, reason in expected.items():
        assert reason in rows[number], rows[number]
