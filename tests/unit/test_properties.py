"""Property tests for the invariants of DESIGN.md §3 that live in the pure core (I2, I3, I4, I6)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import (
    Event,
    MessageRead,
    OtnOptin,
    PostbackReceived,
    ReactionReceived,
    RecurringOptin,
    RecurringStatus,
    SendRequest,
    TokenOutcomeUnknown,
    TokenReleased,
    TokenSpent,
    UserUnavailable,
    WindowClosedByMeta,
)
from schemas.events import CommentReceived
from tests.unit.builders import PAGE, T0, USER, H, decided, empty, message
from windowgate.core.decide import decide
from windowgate.core.fold import fold, fold_all
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules

BOOKS = [
    load_rules(),
    load_rules().with_pages(
        {PAGE: PageConfig(page_id=PAGE, human_agent=True, region="DE", ad_account_id="act")}
    ),
    load_rules().with_pages(
        {PAGE: PageConfig(page_id=PAGE, human_agent=True, region="US", ad_account_id="act")}
    ),
]
TOPICS = ["restock", "price-drop", "weekly-deals"]
# Hours after T0 (2026-05-04) reach back before the 2026-04-27 retirement and on past a year.
hours = st.integers(min_value=-24 * 400, max_value=24 * 400)
KIND_FOR = {
    "RESPONSE": "window",
    "UPDATE": "window",
    "HUMAN_AGENT": "human_agent",
    "MESSAGE_TAG": "message_tag",
    "OTN": "otn",
    "RECURRING": "recurring",
    "MARKETING": "marketing",
    "UTILITY": "utility",
    "PRIVATE_REPLY": "private_reply",
}
ONE_TIME = frozenset({"OTN", "PRIVATE_REPLY"})
"""Mechanisms whose token (an OTN token, a comment's id) goes into one allowed decision only."""


def _ts(h: int) -> int:
    return T0 + h * H


@st.composite
def order_free_events(draw: Any) -> Event:
    """Webhook facts whose fold is order-free: same (token, time) always means the same fact."""
    h = draw(hours)
    ts = _ts(h)
    topic = draw(st.sampled_from(TOPICS))
    kind = draw(st.integers(0, 9))
    base = {"page_id": PAGE, "user_id": USER, "timestamp": ts}
    if kind == 0:
        return message(ts, mid=f"m{h}", ad=h % 2 == 0)
    if kind == 1:
        return PostbackReceived(**base, payload="P")
    if kind == 2:
        return ReactionReceived(**base, action=draw(st.sampled_from(["react", "unreact"])), mid="x")
    if kind == 3:
        return OtnOptin(**base, token=f"otn-{topic}-{h}", topic=topic)
    if kind == 4:
        freq = ["DAILY", "WEEKLY", "MONTHLY"][h % 3]
        return RecurringOptin(**base, token=f"rn-{topic}", topic=topic, frequency=freq)
    if kind == 5:
        status = draw(st.sampled_from(["STOP", "RESUME"]))
        return RecurringStatus(**base, token=f"rn-{topic}", status=status, topic=topic)
    if kind == 6:
        return WindowClosedByMeta(**base)
    if kind == 7:
        return UserUnavailable(**base)
    if kind == 8:
        return CommentReceived(**base, post_id="post", comment_id=f"c{h}", dedup_key=f"cm:c{h}")
    return MessageRead(**base, watermark=ts)


@st.composite
def requests(draw: Any) -> SendRequest:
    purpose = draw(
        st.sampled_from(
            [
                "auto",
                "response",
                "update",
                "human_agent",
                "otn",
                "recurring",
                "marketing",
                "utility",
                "tag",
            ]
        )
    )
    return SendRequest(
        request_id=f"r{draw(st.integers(0, 15))}",
        page_id=PAGE,
        user_id=USER,
        purpose=purpose,
        topic=draw(st.none() | st.sampled_from(TOPICS)),
        tag=draw(
            st.none() | st.sampled_from(["ACCOUNT_UPDATE", "HUMAN_AGENT", "CUSTOMER_FEEDBACK"])
        ),
        human_author=draw(st.none() | st.just("agent@shop")),
        message=draw(st.none() | st.just({"template": {"name": "order_update"}})),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(order_free_events(), max_size=25), st.data())
def test_duplicates_never_change_state(events: list[Event], data: Any) -> None:
    once = fold_all(empty(), events)
    with_duplicates = list(events)
    for event in data.draw(st.lists(st.sampled_from(events), max_size=10)) if events else []:
        with_duplicates.insert(data.draw(st.integers(0, len(with_duplicates))), event)
    assert fold_all(empty(), with_duplicates) == once
    for event in events:
        assert fold(once, event) == once


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(order_free_events(), max_size=25),
    st.randoms(),
    st.lists(requests(), max_size=8),
    hours,
)
def test_order_free_events_give_the_same_state_and_decisions(
    events: list[Event], rnd: Any, reqs: list[SendRequest], h: int
) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    state, other = fold_all(empty(), events), fold_all(empty(), shuffled)
    assert state == other
    for book in BOOKS:
        for req in reqs:
            assert decide(state, req, _ts(h), book) == decide(other, req, _ts(h), book)


@st.composite
def scenario(draw: Any) -> list[tuple[str, Any]]:
    """Events, requests and the dispatcher's outcomes interleaved at non-decreasing times."""
    steps: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 40))):
        choice = draw(st.integers(0, 15))
        if choice < 3:
            steps.append(("event", draw(order_free_events())))
        elif choice < 5:  # OTN opt-ins on few topics, so tokens are contended
            h, topic = draw(hours), draw(st.sampled_from(TOPICS[:2]))
            token = f"otn-{topic}-{h % 3}"
            optin = OtnOptin(page_id=PAGE, user_id=USER, timestamp=_ts(h), token=token, topic=topic)
            steps.append(("event", optin))
        elif choice < 7:
            steps.append(("request", draw(requests())))
        elif choice in (12, 13):  # a few comments (made shortly before the step), contended
            steps.append(("comment", draw(st.integers(0, 1))))
        elif choice in (14, 15):
            k, request_id = draw(st.integers(0, 1)), f"r{draw(st.integers(0, 15))}"
            named = draw(
                st.sampled_from(
                    [{"private_reply_to": f"c{k}"}, {"purpose": "otn", "token": f"otn-restock-{k}"}]
                )
            )
            req = SendRequest(request_id=request_id, page_id=PAGE, user_id=USER, **named)
            steps.append(("request", req))
        elif choice < 10:  # requests that want a token
            topic = draw(st.sampled_from(TOPICS[:2]))
            purpose = draw(st.sampled_from(["otn", "auto"]))
            request_id = f"r{draw(st.integers(0, 15))}"
            req = SendRequest(
                request_id=request_id, page_id=PAGE, user_id=USER, purpose=purpose, topic=topic
            )
            steps.append(("request", req))
        else:
            steps.append(("outcome", draw(st.sampled_from(["spent", "unknown", "released"]))))
    return steps


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.sampled_from(range(len(BOOKS))), hours)
def test_a_token_is_never_granted_twice_and_nothing_is_allowed_without_a_rule_in_force(
    steps: list[tuple[str, Any]], book_index: int, start: int
) -> None:
    book = BOOKS[book_index]
    state = empty()
    now = _ts(start)
    holder: dict[str, str] = {}  # token -> request that holds it
    released: set[tuple[str, str]] = set()
    last_allowed: tuple[str, str] | None = None
    for i, (what, item) in enumerate(steps):
        now += H * (i % 7)
        if what == "event":
            state = fold(state, item)
            continue
        if what == "comment":
            made = now - H * (item + 1) * 24  # 1 to 3 days ago: within R-WIN-5's 7 days
            comment = CommentReceived(
                page_id=PAGE, user_id=USER, timestamp=made, post_id="post", comment_id=f"c{item}"
            )
            state = fold(state, comment)
            continue
        if what == "outcome":
            if last_allowed is None:
                continue
            token, request_id = last_allowed
            cls = {"spent": TokenSpent, "unknown": TokenOutcomeUnknown, "released": TokenReleased}[
                item
            ]
            state = fold(
                state,
                cls(page_id=PAGE, user_id=USER, timestamp=now, token=token, request_id=request_id),
            )
            if item == "released":
                released.add((token, request_id))
            continue
        decision = decide(state, item, now, book)
        if decision.allowed and not decision.duplicate:
            # I6 / rules as data: an allowed decision cites a rule in force for this page now.
            assert decision.rule is not None and decision.mechanism is not None
            found = book.lookup(
                KIND_FOR[decision.mechanism],
                item.platform,
                PAGE,
                now,
                decision.tag if decision.mechanism == "MESSAGE_TAG" else None,
            )
            assert found.rule is not None and found.rule.id in (decision.rule, "R-WIN-1")
            if decision.mechanism in ONE_TIME:
                assert decision.token is not None
                if item.token is not None:  # a named token is the one granted
                    assert decision.token == item.token
                previous = holder.get(decision.token)
                # I4: an OTN token (a comment's private reply) goes to a second request only if
                # the first one was released.
                assert previous is None or (decision.token, previous) in released
                holder[decision.token] = decision.request_id
                last_allowed = (decision.token, decision.request_id)
        state = fold(state, decided(decision))
        again = decide(state, item, now, book)
        assert again.duplicate and again.request_id == decision.request_id  # I3
