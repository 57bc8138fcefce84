"""`decide`: every mechanism, every refusal reason, the auto order, duplicates and deadlines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest

from schemas import (
    PageState,
    PluginOptin,
    PostbackReceived,
    ReactionReceived,
    RecurringOptin,
    SendRequest,
    ThreadControl,
    TokenReleased,
    TokenSpent,
    UserUnavailable,
    WindowClosedByMeta,
)
from schemas.types import RefusedReason
from tests.unit.builders import (
    PAGE,
    T0,
    USER,
    D,
    H,
    at,
    comment,
    decided,
    empty,
    message,
    otn,
    request,
    rn_optin,
    rn_status,
)
from windowgate.core.decide import assess, decide, still_valid
from windowgate.core.fold import fold, fold_all
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules

RULES = load_rules()
HA_PAGE = RULES.with_pages({PAGE: PageConfig(page_id=PAGE, human_agent=True)})


def in_window(ts: int = T0) -> Any:
    return fold(empty(), message(ts))


# ---- the 24 h window (R-WIN-1..3) --------------------------------------------------------------


def test_window_open_until_24h_after_the_last_opener() -> None:
    state = in_window()
    allowed = decide(state, request(purpose="response"), T0 + 24 * H - 1, RULES)
    assert (allowed.allowed, allowed.mechanism, allowed.reason) == (True, "RESPONSE", "window_open")
    assert allowed.valid_until == T0 + 24 * H
    assert allowed.rule == "R-WIN-1"
    closed = decide(state, request(purpose="response"), T0 + 24 * H, RULES)
    assert (closed.allowed, closed.reason) == (False, "window_closed")


def test_update_purpose_uses_update_messaging_type() -> None:
    assert decide(in_window(), request(purpose="update"), T0 + H, RULES).mechanism == "UPDATE"


@pytest.mark.parametrize(
    "opener",
    [
        PostbackReceived(page_id=PAGE, user_id=USER, timestamp=T0, payload="GET_STARTED"),
        ReactionReceived(page_id=PAGE, user_id=USER, timestamp=T0, action="react", mid="m"),
    ],
)
def test_postbacks_and_reactions_open_the_window(opener: Any) -> None:
    assert decide(fold(empty(), opener), request(), T0 + H, RULES).allowed


def test_unreact_and_opt_ins_do_not_open_the_window() -> None:
    unreact = ReactionReceived(page_id=PAGE, user_id=USER, timestamp=T0, action="unreact", mid="m")
    state = fold_all(empty(), [unreact, otn(T0), rn_optin(T0)])
    assert decide(state, request(purpose="response"), T0 + H, RULES).reason == "window_closed"


def test_meta_saying_the_window_is_closed_wins_over_our_clock() -> None:
    state = fold(in_window(), WindowClosedByMeta(page_id=PAGE, user_id=USER, timestamp=T0 + H))
    assert decide(state, request(), T0 + 2 * H, RULES).reason == "window_closed"
    reopened = fold(state, message(T0 + 3 * H, mid="m2"))
    assert decide(reopened, request(), T0 + 4 * H, RULES).allowed


def test_ad_window_needs_the_page_switch() -> None:
    when = at("2026-10-01T00:00:00Z")
    state = fold(empty(), message(when, ad=True))
    assert not decide(state, request(), when + 3 * D, RULES).allowed
    book = RULES.with_pages(
        {PAGE: PageConfig(page_id=PAGE, rule_overrides={"R-WIN-4": {"enabled": True}})}
    )
    allowed = decide(state, request(), when + 3 * D, book)
    assert (allowed.allowed, allowed.rule, allowed.valid_until) == (True, "R-WIN-4", when + 7 * D)
    plain = fold(empty(), message(when))  # not from an ad: 24 h only
    assert not decide(plain, request(), when + 3 * D, book).allowed


# ---- HUMAN_AGENT (R-TAG-HA) --------------------------------------------------------------------


def test_human_agent_within_7_days_of_the_last_message() -> None:
    state = in_window()
    req = request(purpose="human_agent", human_author="agent@shop")
    ok = decide(state, req, T0 + 7 * D - 1, HA_PAGE)
    assert (ok.allowed, ok.mechanism, ok.reason, ok.tag) == (
        True,
        "HUMAN_AGENT",
        "human_agent_window",
        "HUMAN_AGENT",
    )
    assert decide(state, req, T0 + 7 * D, HA_PAGE).reason == "human_agent_window_closed"


def test_human_agent_needs_permission_and_a_human() -> None:
    state = in_window()
    assert decide(
        state, request(purpose="human_agent", human_author="a"), T0 + D, RULES
    ).reason == ("human_agent_not_permitted")
    assert (
        decide(state, request(purpose="human_agent"), T0 + D, HA_PAGE).reason
        == "human_author_missing"
    )


def test_human_agent_window_counts_messages_not_postbacks() -> None:
    state = fold(empty(), PostbackReceived(page_id=PAGE, user_id=USER, timestamp=T0, payload="x"))
    refused = decide(state, request(purpose="human_agent", human_author="a"), T0 + 2 * D, HA_PAGE)
    assert refused.reason == "human_agent_window_closed"


def test_human_agent_as_a_tag_is_the_same_rule() -> None:
    req = request(purpose="tag", tag="HUMAN_AGENT", human_author="a")
    assert decide(in_window(), req, T0 + 2 * D, HA_PAGE).mechanism == "HUMAN_AGENT"


# ---- message tags ------------------------------------------------------------------------------


def test_retired_tag_allowed_the_day_before_and_refused_on_the_day() -> None:
    state = fold(empty(), message(at("2026-04-01")))
    req = request(purpose="tag", tag="ACCOUNT_UPDATE")
    before = decide(state, req, at("2026-04-26T12:00:00Z"), RULES)
    assert (before.allowed, before.mechanism, before.tag, before.reason) == (
        True,
        "MESSAGE_TAG",
        "ACCOUNT_UPDATE",
        "message_tag",
    )
    after = decide(state, req, at("2026-04-27T00:00:00Z"), RULES)
    assert (after.allowed, after.reason) == (False, "tag_retired")


def test_tag_purpose_without_tag_or_with_unknown_tag_is_invalid() -> None:
    assert decide(in_window(), request(purpose="tag"), T0, RULES).reason == "invalid_request"
    assert (
        decide(in_window(), request(purpose="tag", tag="NOPE"), T0, RULES).reason
        == "invalid_request"
    )


def test_customer_feedback_is_off_by_default() -> None:
    req = request(purpose="tag", tag="CUSTOMER_FEEDBACK")
    assert decide(in_window(), req, T0 + D, RULES).reason == "mechanism_disabled"
    book = RULES.with_pages(
        {PAGE: PageConfig(page_id=PAGE, rule_overrides={"R-TAG-CFB": {"enabled": True}})}
    )
    assert decide(in_window(), req, T0 + D, book).allowed
    assert decide(in_window(), req, T0 + 8 * D, book).reason == "window_closed"


# ---- OTN (R-OTN-*) -----------------------------------------------------------------------------


def test_otn_token_is_one_message_within_one_year() -> None:
    state = fold(empty(), otn(T0))
    req = request(purpose="otn", topic="restock")
    ok = decide(state, req, T0 + 365 * D - 1, RULES)
    assert (ok.allowed, ok.mechanism, ok.token, ok.reason) == (True, "OTN", "otn-1", "otn_token")
    assert ok.valid_until == T0 + 365 * D
    assert decide(state, req, T0 + 365 * D + 1, RULES).reason == "token_expired"


def test_otn_token_spent_once_granted() -> None:
    state = fold(empty(), otn(T0))
    first = decide(state, request("a", purpose="otn", topic="restock"), T0 + D, RULES)
    state = fold(state, decided(first))
    second = decide(state, request("b", purpose="otn", topic="restock"), T0 + D, RULES)
    assert first.allowed and not second.allowed
    assert second.reason == "token_spent"


def test_five_opt_ins_are_five_messages() -> None:
    state = fold_all(empty(), [otn(T0 + i, token=f"t{i}") for i in range(5)])
    used = []
    for i in range(6):
        decision = decide(state, request(f"r{i}", purpose="otn", topic="restock"), T0 + D, RULES)
        state = fold(state, decided(decision))
        used.append(decision.token)
    assert used == ["t0", "t1", "t2", "t3", "t4", None]


def test_otn_released_token_is_usable_again_by_another_request() -> None:
    state = fold(empty(), otn(T0))
    first = decide(state, request("a", purpose="otn", topic="restock"), T0 + D, RULES)
    state = fold(state, decided(first))
    state = fold(
        state,
        TokenReleased(page_id=PAGE, user_id=USER, timestamp=T0 + D, token="otn-1", request_id="a"),
    )
    again = decide(state, request("b", purpose="otn", topic="restock"), T0 + D, RULES)
    assert again.allowed and again.token == "otn-1"


def test_otn_errors() -> None:
    state = fold(empty(), otn(T0))
    assert decide(state, request(purpose="otn"), T0, RULES).reason == "invalid_request"
    assert (
        decide(state, request(purpose="otn", topic="other"), T0, RULES).reason
        == "no_token_for_topic"
    )
    insta = request(purpose="otn", topic="restock", platform="instagram")
    assert decide(state, insta, T0, RULES).reason == "platform_unsupported"


# ---- recurring and marketing (R-RN-*, R-MM) ----------------------------------------------------


def _rn_state(ts: int, **kw: Any) -> Any:
    return fold(empty(), rn_optin(ts, frequency="DAILY", **kw))


def test_recurring_refused_everywhere_but_listed_regions_after_2026_02_10() -> None:
    state = _rn_state(at("2026-01-01"))
    req = request(purpose="recurring", topic="weekly-deals")
    assert decide(state, req, at("2026-02-09"), RULES).allowed
    assert decide(state, req, at("2026-02-10"), RULES).reason == "mechanism_ended"
    eu = RULES.with_pages({PAGE: PageConfig(page_id=PAGE, region="FR")})
    ok = decide(state, req, at("2026-02-10"), eu)
    assert (ok.allowed, ok.mechanism, ok.reason, ok.token) == (
        True,
        "RECURRING",
        "recurring_token",
        "rn-1",
    )


def test_recurring_cooldown_24h_before_and_48h_after_2025_09_01() -> None:
    def second_send_after(first_at: int, gap_hours: int) -> bool:
        state = _rn_state(first_at - D)
        first = decide(
            state, request("a", purpose="recurring", topic="weekly-deals"), first_at, RULES
        )
        assert first.allowed
        state = fold(state, decided(first))
        later = first_at + gap_hours * H
        return decide(
            state, request("b", purpose="recurring", topic="weekly-deals"), later, RULES
        ).allowed

    assert second_send_after(at("2025-07-01"), 24)
    assert not second_send_after(at("2025-10-01"), 47)
    assert second_send_after(at("2025-10-01"), 48)


def test_recurring_cooldown_reason() -> None:
    state = _rn_state(at("2025-10-01"))
    first = decide(state, request("a", purpose="recurring"), at("2025-10-02"), RULES)
    state = fold(state, decided(first))
    refused = decide(state, request("b", purpose="recurring"), at("2025-10-02") + H, RULES)
    assert refused.reason == "cooldown"


def test_recurring_stop_and_resume() -> None:
    state = _rn_state(at("2025-10-01"))
    stopped = fold(state, rn_status(at("2025-10-02"), "STOP"))
    req = request(purpose="recurring", topic="weekly-deals")
    assert decide(stopped, req, at("2025-10-03"), RULES).reason == "opted_out"
    resumed = fold(stopped, rn_status(at("2025-10-04"), "RESUME"))
    assert decide(resumed, req, at("2025-10-05"), RULES).allowed


def test_recurring_expiry_by_frequency_and_by_metas_timestamp() -> None:
    state = _rn_state(at("2025-01-15"))  # DAILY: 6 months
    req = request(purpose="recurring")
    assert decide(state, req, at("2025-07-14"), RULES).allowed
    assert decide(state, req, at("2025-07-15"), RULES).reason == "token_expired"
    explicit = fold(empty(), rn_optin(at("2025-01-15"), expires_at=at("2025-03-01")))
    assert decide(explicit, req, at("2025-03-01"), RULES).reason == "token_expired"


def test_marketing_needs_ad_account_and_allowed_region() -> None:
    state = _rn_state(at("2026-03-01"))
    req = request(purpose="marketing", topic="weekly-deals", message={"message_id": "campaign-1"})
    when = at("2026-03-02")
    assert decide(state, req, when, RULES).reason == "region_excluded"  # region unknown
    no_account = RULES.with_pages({PAGE: PageConfig(page_id=PAGE, region="US")})
    assert decide(state, req, when, no_account).reason == "page_not_configured"
    us = RULES.with_pages({PAGE: PageConfig(page_id=PAGE, region="US", ad_account_id="act_1")})
    ok = decide(state, req, when, us)
    assert (ok.allowed, ok.mechanism, ok.reason) == (True, "MARKETING", "marketing_token")
    uk = RULES.with_pages({PAGE: PageConfig(page_id=PAGE, region="GB", ad_account_id="act_1")})
    assert decide(state, req, when, uk).reason == "region_excluded"


def test_no_subscription_token() -> None:
    assert decide(empty(), request(purpose="recurring"), at("2025-10-01"), RULES).reason == (
        "no_token_for_topic"
    )


# ---- utility -----------------------------------------------------------------------------------


def test_utility_needs_a_named_template_on_messenger() -> None:
    template = {"template": {"name": "order_shipped", "language": "en_US"}}
    ok = decide(empty(), request(purpose="utility", message=template), T0, RULES)
    assert (ok.allowed, ok.mechanism, ok.reason) == (True, "UTILITY", "utility_template")
    assert decide(
        empty(), request(purpose="utility", message={"text": "hi"}), T0, RULES
    ).reason == ("invalid_request")
    insta = request(purpose="utility", message=template, platform="instagram")
    assert decide(empty(), insta, T0, RULES).reason == "platform_unsupported"


# ---- preconditions -----------------------------------------------------------------------------


def test_page_restricted_refuses_everything() -> None:
    page = PageState(page_id=PAGE, blocked_at=T0)
    assert decide(in_window(), request(), T0 + H, RULES, page).reason == "page_restricted"
    unblocked = replace(page, unblocked_at=T0 + 1)
    assert decide(in_window(), request(), T0 + H, RULES, unblocked).allowed


def test_user_unavailable_until_they_write_again() -> None:
    state = fold(in_window(), UserUnavailable(page_id=PAGE, user_id=USER, timestamp=T0 + H))
    assert decide(state, request(), T0 + 2 * H, RULES).reason == "user_unavailable"
    assert decide(fold(state, message(T0 + 3 * H, "m2")), request(), T0 + 4 * H, RULES).allowed


def test_thread_owned_by_another_app() -> None:
    standby = fold(empty(), message(T0, standby=True))
    assert decide(standby, request(), T0 + H, RULES).reason == "thread_owned_by_other_app"
    passed = ThreadControl(page_id=PAGE, user_id=USER, timestamp=T0 + 1, action="pass")
    assert decide(fold(standby, passed), request(), T0 + H, RULES).allowed
    taken = ThreadControl(page_id=PAGE, user_id=USER, timestamp=T0 + 2, action="take")
    assert (
        decide(fold(in_window(), taken), request(), T0 + H, RULES).reason
        == "thread_owned_by_other_app"
    )


def test_deadline_passed() -> None:
    assert decide(in_window(), request(send_by=T0 + H), T0 + H, RULES).reason == "deadline_passed"
    ok = decide(in_window(), request(send_by=T0 + 2 * H), T0 + H, RULES)
    assert ok.allowed and ok.valid_until == T0 + 2 * H  # the deadline shortens validity


# ---- auto --------------------------------------------------------------------------------------


def test_auto_prefers_the_window_then_human_agent_then_otn() -> None:
    state = fold_all(empty(), [message(T0), otn(T0)])
    both = request(human_author="a", topic="restock")
    assert decide(state, both, T0 + H, HA_PAGE).mechanism == "RESPONSE"
    assert decide(state, both, T0 + 2 * D, HA_PAGE).mechanism == "HUMAN_AGENT"
    assert decide(state, both, T0 + 8 * D, HA_PAGE).mechanism == "OTN"
    assert decide(state, both, T0 + 2 * D, RULES).mechanism == "OTN"  # no HA permission


def test_auto_never_uses_a_token_without_a_topic_and_lists_alternatives() -> None:
    state = fold_all(empty(), [message(T0), otn(T0)])
    refused = decide(state, request(), T0 + 2 * D, HA_PAGE)
    assert (refused.allowed, refused.reason, refused.token) == (False, "window_closed", None)
    mechanisms = {(a.mechanism, a.topic) for a in refused.alternatives}
    assert ("OTN", "restock") in mechanisms
    assert ("HUMAN_AGENT", None) in mechanisms
    assert ("UTILITY", None) in mechanisms
    assert ("RESPONSE", None) not in mechanisms


# ---- duplicates and validity -------------------------------------------------------------------


def test_repeated_request_id_gets_the_first_decision_back() -> None:
    state = fold(empty(), otn(T0))
    first = decide(state, request("same", purpose="otn", topic="restock"), T0 + D, RULES)
    state = fold(state, decided(first))
    again = decide(state, request("same", purpose="otn", topic="restock"), T0 + 2 * D, RULES)
    assert again.duplicate and not first.duplicate
    assert replace(again, duplicate=False) == first


def test_still_valid_rechecks_before_the_call() -> None:
    decision = decide(in_window(), request(), T0 + H, RULES)
    assert still_valid(decision, T0 + 23 * H)
    assert not still_valid(decision, T0 + 24 * H)


def test_assess_reports_every_mechanism() -> None:
    state = fold_all(empty(), [message(T0), otn(T0), rn_optin(T0, frequency="DAILY")])
    verdicts = assess(state, T0 + H, HA_PAGE)
    by_mechanism = {(v.mechanism, v.allowed) for v in verdicts}
    assert ("RESPONSE", True) in by_mechanism
    assert ("HUMAN_AGENT", True) in by_mechanism
    assert ("OTN", True) in by_mechanism
    assert ("RECURRING", False) in by_mechanism  # ended 2026-02-10, region unknown
    assert ("MARKETING", False) in by_mechanism


# ---- a named OTN token (issue 14.3), private replies (R-WIN-5), user_ref (R-WIN-2) -------------


def _two_tokens() -> Any:
    """Tokens A (older) and B on one topic, and C on another."""
    return fold_all(
        empty(), [otn(T0, token="A"), otn(T0 + H, token="B"), otn(T0, token="C", topic="sale")]
    )


def test_a_named_token_is_the_one_spent_and_the_older_stays_usable() -> None:
    state = _two_tokens()
    named_b = decide(state, request("b", purpose="otn", token="B"), T0 + D, RULES)
    assert (named_b.allowed, named_b.token, named_b.topic) == (True, "B", "restock")
    state = fold(state, decided(named_b))
    named_a = decide(state, request("a", purpose="otn", token="A"), T0 + D, RULES)
    assert (named_a.allowed, named_a.token) == (True, "A")
    again_b = decide(state, request("b2", purpose="otn", token="B"), T0 + D, RULES)
    assert (again_b.allowed, again_b.reason) == (False, "token_spent")
    assert "reserved by request b" in again_b.detail


def test_a_named_token_is_refused_never_swapped() -> None:
    state = _two_tokens()
    unknown = decide(state, request(purpose="otn", token="Z"), T0 + D, RULES)
    assert (unknown.allowed, unknown.reason, unknown.token) == (False, "token_not_found", None)
    other = decide(state, request(purpose="otn", topic="restock", token="C"), T0 + D, RULES)
    assert (other.allowed, other.reason) == (False, "token_topic_mismatch")
    late = decide(state, request(purpose="otn", token="A"), T0 + 365 * D, RULES)
    assert (late.allowed, late.reason) == (False, "token_expired")
    assert decide(state, request(purpose="otn", token="A"), T0 + 365 * D - 1, RULES).allowed
    wrong_purpose = decide(state, request(purpose="recurring", token="A"), T0 + D, RULES)
    assert wrong_purpose.reason == "invalid_request"


def test_auto_with_a_named_token_uses_the_window_first_then_exactly_that_token() -> None:
    state = fold(_two_tokens(), message(T0))
    assert decide(state, request(token="B"), T0 + H, RULES).mechanism == "RESPONSE"
    closed = decide(state, request(token="B"), T0 + 2 * D, RULES)
    assert (closed.mechanism, closed.token) == ("OTN", "B")


def test_private_reply_once_within_7_days() -> None:
    state = fold(empty(), comment(T0, comment_id="c1"))
    ask = request("p1", private_reply_to="c1")
    first = decide(state, ask, T0 + 7 * D - 1, RULES)
    assert (first.allowed, first.mechanism, first.reason) == (
        True,
        "PRIVATE_REPLY",
        "private_reply",
    )
    assert (first.token, first.recipient, first.rule) == ("c1", "comment_id", "R-WIN-5")
    assert first.valid_until == T0 + 7 * D
    for late_at in (T0 + 7 * D, T0 + 7 * D + 1):
        late = decide(state, ask, late_at, RULES)
        assert (late.allowed, late.reason) == (False, "private_reply_expired")
    state = fold(state, decided(first))
    second = decide(state, request("p2", private_reply_to="c1"), T0 + D, RULES)
    assert (second.allowed, second.reason) == (False, "private_reply_used")
    unknown = decide(state, request("p3", private_reply_to="c9"), T0 + D, RULES)
    assert (unknown.allowed, unknown.reason) == (False, "no_comment")


def test_private_reply_to_a_visitor_post_names_the_post_and_opens_no_window() -> None:
    state = fold(empty(), comment(T0, post_id="page_post"))
    reply = decide(state, request(private_reply_to="page_post"), T0 + H, RULES)
    assert (reply.allowed, reply.recipient) == (True, "post_id")
    assert not decide(state, request("r2", purpose="response"), T0 + H, RULES).allowed


def test_private_reply_and_user_ref_take_only_window_purposes() -> None:
    state = fold(empty(), comment(T0, comment_id="c1"))
    wrong = decide(state, request(purpose="otn", private_reply_to="c1"), T0 + H, RULES)
    assert wrong.reason == "invalid_request"
    both = decide(state, request(private_reply_to="c1", by_user_ref=True), T0 + H, RULES)
    assert both.reason == "invalid_request"


def test_a_plugin_opt_in_opens_the_window_for_its_user_ref() -> None:
    opted = fold(
        empty(user="ref-42"),
        PluginOptin(page_id=PAGE, user_id="ref-42", timestamp=T0, user_ref="ref-42"),
    )
    ask = SendRequest(
        request_id="u1", page_id=PAGE, user_id="ref-42", by_user_ref=True, message={"text": "hi"}
    )
    sent = decide(opted, ask, T0 + 24 * H - 1, RULES)
    assert (sent.allowed, sent.mechanism, sent.recipient) == (True, "RESPONSE", "user_ref")
    assert decide(opted, ask, T0 + 24 * H, RULES).reason == "window_closed"


ALL_REFUSALS: frozenset[str] = frozenset(get_args(RefusedReason))  # every code, from schemas


def test_every_refusal_reason_has_a_test_above() -> None:
    source = "".join(  # this file above the list, and the other test_decide_*.py files
        path.read_text(encoding="utf-8").split("ALL_REFUSALS")[0]
        for path in sorted(Path(__file__).parent.glob("test_decide*.py"))
    )
    missing = {r for r in ALL_REFUSALS if f'"{r}"' not in source}
    assert not missing


def test_spent_token_event_is_terminal() -> None:
    state = fold(empty(), otn(T0))
    state = fold(
        state, TokenSpent(page_id=PAGE, user_id=USER, timestamp=T0, token="otn-1", request_id="x")
    )
    state = fold(
        state,
        TokenReleased(page_id=PAGE, user_id=USER, timestamp=T0, token="otn-1", request_id="x"),
    )
    assert decide(state, request(purpose="otn", topic="restock"), T0, RULES).reason == "token_spent"


def test_recurring_optin_refresh_keeps_first_created_at() -> None:
    first = RecurringOptin(
        page_id=PAGE, user_id=USER, timestamp=T0, token="rn-1", frequency="DAILY"
    )
    refreshed = replace(first, timestamp=T0 + 100 * D, token_status="REFRESHED")
    state = fold_all(empty(), [refreshed, first])
    assert state.recurring[0].created_at == T0
    assert state.recurring[0].refreshed_at == T0 + 100 * D
