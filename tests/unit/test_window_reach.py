"""Reach aggregates: counters that expire on time, and an index that agrees with `assess`."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.events import Event, OtnOptin, RecurringOptin, RecurringStatus, ThreadControl
from schemas.request import SendRequest
from schemas.state import UserState
from services.window.reach import (
    EXPIRING_SOON_MS,
    ExpiringCounter,
    ReachIndex,
    combine,
    rule_boundaries,
)
from tests.unit.builders import PAGE, T0, D, H, at, decided, message
from tests.unit.test_properties import TOPICS, hours, order_free_events
from windowgate.core.decide import assess, decide
from windowgate.core.fold import fold, fold_all
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import RuleBook, load_rules

RULES = load_rules().with_pages(
    {PAGE: PageConfig(page_id=PAGE, human_agent=True, region="DE", ad_account_id="act_1")}
)
# Recurring notifications still run in DE, marketing messages only outside the EU.
BOOKS = {
    "DE": RULES,
    "US": load_rules().with_pages(
        {PAGE: PageConfig(page_id=PAGE, human_agent=True, region="US", ad_account_id="act_1")}
    ),
}
OTN_DAYS = 365


# ---- ExpiringCounter ----------------------------------------------------------------------------


def test_values_count_until_they_expire() -> None:
    counter = ExpiringCounter()
    for until in (10, 20, 20, 30, None):
        counter.add(until)
    assert [counter.count(t) for t in (0, 9, 10, 19, 20, 29, 30, 1_000)] == [5, 5, 4, 4, 2, 2, 1, 1]


def test_removed_values_stop_counting_and_expired_ones_are_not_counted_twice() -> None:
    counter = ExpiringCounter()
    for until in (10, 20, 30):
        counter.add(until)
    counter.remove(20)
    assert counter.count(15) == 1
    counter.remove(10)  # expired already at 15: removing it must not count it out again
    assert counter.count(15) == 1
    counter.add(5)  # ended before the last count: never counts
    assert counter.count(15) == 1
    counter.remove(5)
    assert counter.count(15) == 1
    counter.remove(30)
    counter.add(None)
    assert counter.count(10**15) == 1


def test_a_clock_that_goes_back_does_not_resurrect_values() -> None:
    counter = ExpiringCounter()
    counter.add(10)
    assert counter.count(20) == 0
    assert counter.count(5) == 0


def test_many_updates_of_the_same_values_keep_the_heap_small() -> None:
    counter = ExpiringCounter()
    for i in range(10_000):
        counter.add(1_000 + i)
        counter.remove(1_000 + i)
    assert counter.count(0) == 0
    assert len(counter._heap) < 200


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "count"]),
            st.none() | st.integers(0, 50),
        ),
        max_size=60,
    )
)
def test_the_counter_agrees_with_a_brute_force_count(ops: list[tuple[str, int | None]]) -> None:
    counter = ExpiringCounter()
    held: Counter[int | None] = Counter()
    now = 0
    for op, value in ops:
        if op == "add":
            counter.add(value)
            held[value] += 1
        elif op == "remove" and held[value] > 0:
            counter.remove(value)
            held[value] -= 1
        elif op == "count":
            now = max(now, value or 0)
            expected = sum(n for until, n in held.items() if until is None or until > now)
            assert counter.count(now) == expected


# ---- the index against assess -------------------------------------------------------------------


def brute_force(states: list[UserState], now: int, rules: RuleBook) -> dict[str, int]:
    """The page's counts computed the slow way: every user assessed at `now`."""
    counts: Counter[str] = Counter()
    for state in states:
        counts["users"] += 1
        verdicts = [v for v in assess(state, now, rules) if v.allowed]
        for mechanism in {v.mechanism for v in verdicts}:
            counts[f"users:{mechanism}"] += 1
        for verdict in verdicts:
            if verdict.mechanism == "MESSAGE_TAG":
                counts[f"tag:{verdict.tag}"] += 1
            if verdict.mechanism == "OTN":
                counts[f"otn_users:{verdict.topic}"] += 1
                for token in state.otn:
                    ends = token.created_at + OTN_DAYS * D
                    if token.topic == verdict.topic and token.status == "available" and ends > now:
                        counts[f"otn_tokens:{verdict.topic}"] += 1
                        counts["tokens:OTN"] += 1
                        counts["tokens_after_7d:OTN"] += ends - EXPIRING_SOON_MS > now
        subscriptions = {
            (v.mechanism, v.token): v.valid_until
            for v in verdicts
            if v.mechanism in ("RECURRING", "MARKETING", "PRIVATE_REPLY") and v.token
        }
        for (mechanism, _), until in subscriptions.items():
            if until is not None:
                counts[f"tokens:{mechanism}"] += 1
                counts[f"tokens_after_7d:{mechanism}"] += until - EXPIRING_SOON_MS > now
    return {label: n for label, n in counts.items() if n}


def page_totals(index: ReachIndex, now: int) -> dict[str, int]:
    index.flush(now)
    return combine(index.partials(PAGE, now).values())


Send = tuple[int, str, str]
"""A subscription send decided at T0 + hours: (hours, purpose, topic); it starts a cooldown."""


def user_states(users: list[tuple[list[Event], list[Send]]], rules: RuleBook) -> list[UserState]:
    states = []
    for n, (events, sends) in enumerate(users):
        user = f"user-{n}"
        moved = [_for_user(e, user) for e in events]
        state = fold_all(UserState(page_id=PAGE, user_id=user), moved)
        for i, (h, purpose, topic) in enumerate(sends):
            request = SendRequest(
                request_id=f"s{i}",
                page_id=PAGE,
                user_id=user,
                purpose=purpose,
                topic=topic,
                message={"text": "hello"},
            )
            decision = decide(state, request, T0 + h * H, rules)
            if decision.allowed:
                state = fold(state, decided(decision))
        states.append(state)
    return states


def _for_user(event: Event, user: str) -> Event:
    moved = replace(event, user_id=user)
    token = getattr(event, "token", None)
    return moved if token is None else replace(cast(Any, moved), token=f"{user}-{token}")


def index_of(states: list[UserState], now: int, rules: RuleBook = RULES) -> ReachIndex:
    by_key = {s.key.encode(): s for s in states}
    index = ReachIndex(rules, by_key.get, now)
    for i, (key, state) in enumerate(by_key.items()):
        index.mark(key, i % 3, state)
    for partition in range(3):
        index.complete_partition(partition)
    index.flush(now)
    return index


def check_the_index_against_assess(
    users: list[tuple[list[Event], list[Send]]], moments: list[tuple[int, int]], region: str
) -> None:
    """Index at T0 - 30 days, then compare with `assess` at later whole hours and 1 ms either
    side (windows close, tokens expire and cooldowns end on whole hours here). No event arrives
    after indexing, yet all of these show on time, and so do rule changes in between (the tag
    retirement of 2026-04-27, say)."""
    rules = BOOKS[region]
    states = user_states(users, rules)
    start = T0 - 30 * D
    index = index_of(states, start, rules)
    assert page_totals(index, start) == brute_force(states, start, rules)
    for now in sorted(max(start, start + h * H + ms) for h, ms in moments):
        assert page_totals(index, now) == brute_force(states, now, rules), now


USERS = st.lists(
    st.tuples(
        st.lists(order_free_events(), max_size=8),
        st.lists(
            st.tuples(hours, st.sampled_from(["recurring", "marketing"]), st.sampled_from(TOPICS)),
            max_size=3,
        ),
    ),
    min_size=1,
    max_size=12,
)
MOMENTS = st.lists(st.tuples(st.integers(0, 24 * 500), st.integers(-1, 1)), min_size=1, max_size=4)
REGIONS = st.sampled_from(sorted(BOOKS))
# CI found it: once the "price-drop" token expires, the "any topic" verdict of a token known only
# from a RESUME (no topic, no frequency, so no expiry) takes over, and the user stays reachable.
PINNED = example(
    users=[
        (
            [
                RecurringOptin(
                    page_id=PAGE,
                    user_id="u",
                    token="rn-price-drop",
                    topic="price-drop",
                    frequency="DAILY",
                    timestamp=T0,
                ),
                RecurringStatus(
                    page_id=PAGE,
                    user_id="u",
                    token="rn-restock",
                    status="RESUME",
                    topic="restock",
                    timestamp=T0,
                ),
            ],
            [],
        )
    ],
    moments=[(4239, 0), (5136, 0)],
    region="DE",
)


@PINNED
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=USERS, moments=MOMENTS, region=REGIONS)
def test_the_index_counts_what_assess_says_at_every_later_moment(
    users: list[tuple[list[Event], list[Send]]], moments: list[tuple[int, int]], region: str
) -> None:
    check_the_index_against_assess(users, moments, region)


@pytest.mark.slow
@PINNED
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=USERS, moments=MOMENTS, region=REGIONS)
def test_the_index_counts_what_assess_says_with_many_examples(
    users: list[tuple[list[Event], list[Send]]], moments: list[tuple[int, int]], region: str
) -> None:
    """The same property, searched much further. Against the index this replaced (these
    strategies, no pinned example), 60 examples never found its bug in 14 runs, 2000 found it in
    9 of 14, 5000 in 8 of 8."""
    check_the_index_against_assess(users, moments, region)


def test_a_state_change_replaces_the_users_old_facts() -> None:
    user = UserState(page_id=PAGE, user_id="u1")
    opened = fold(user, message(T0, user_id="u1"))
    index = index_of([opened], T0)
    assert page_totals(index, T0)["users:RESPONSE"] == 1
    taken = fold(opened, ThreadControl(page_id=PAGE, user_id="u1", timestamp=T0 + 1, action="take"))
    index.mark(taken.key.encode(), 0, taken)
    totals = page_totals(index, T0 + 2)
    assert totals == {"users": 1}
    assert page_totals(index, T0 + 25 * H) == {"users": 1}


def test_a_user_in_cooldown_is_counted_again_when_it_ends() -> None:
    now = at("2026-05-04T12:00:00Z")
    optin = RecurringOptin(
        page_id=PAGE, user_id="u1", timestamp=now - D, token="rn", topic="deals", frequency="WEEKLY"
    )
    state = fold(UserState(page_id=PAGE, user_id="u1"), optin)
    request = SendRequest(
        request_id="r1",
        page_id=PAGE,
        user_id="u1",
        purpose="recurring",
        topic="deals",
        message={"text": "hello"},
    )
    decision = decide(state, request, now, RULES)
    assert decision.allowed
    state = fold(state, decided(decision))
    by_key = {state.key.encode(): state}
    index = ReachIndex(RULES, by_key.get, now)
    index.mark(state.key.encode(), 0, state)
    index.complete_partition(0)
    assert "users:RECURRING" not in page_totals(index, now)
    ends = now + 48 * H  # R-RN-2: one recurring notification per token per 48 h
    assert "users:RECURRING" not in page_totals(index, ends - 1)
    for moment in (ends, ends + 1):  # counted from the very instant assess allows it again
        assert page_totals(index, moment) == brute_force([state], moment, RULES)
        assert page_totals(index, moment)["users:RECURRING"] == 1


def test_a_preferred_token_out_of_its_cooldown_takes_over_at_that_instant() -> None:
    """While token A cools down the user is reached through B; from the instant A's cooldown
    ends `assess` grants A again, whose end is near: counted as expiring within a week."""
    now = at("2026-05-04T12:00:00Z")
    state = UserState(page_id=PAGE, user_id="u1")
    for token, expires in (("rn-a", now + 5 * D), ("rn-b", now + 200 * D)):
        optin = RecurringOptin(
            page_id=PAGE,
            user_id="u1",
            timestamp=now - D,
            token=token,
            topic="deals",
            frequency="WEEKLY",
            expires_at=expires,
        )
        state = fold(state, optin)
    request = SendRequest(
        request_id="r1",
        page_id=PAGE,
        user_id="u1",
        purpose="recurring",
        topic="deals",
        message={"text": "hello"},
    )
    decision = decide(state, request, now, RULES)
    assert decision.token == "rn-a"
    state = fold(state, decided(decision))
    ends = now + 48 * H
    [granted, *_] = [v for v in assess(state, now, RULES) if v.mechanism == "RECURRING"]
    assert (granted.token, granted.usable_from, granted.changes_at) == ("rn-b", ends, ends)
    index = index_of([state], now)
    assert page_totals(index, ends - 1)["tokens_after_7d:RECURRING"] == 1  # B, far from its end
    for moment in (ends - 1, ends, ends + 1):
        assert page_totals(index, moment) == brute_force([state], moment, RULES), moment
    assert "tokens_after_7d:RECURRING" not in page_totals(index, ends)  # A ends within a week


def test_partitions_are_reported_only_when_complete_and_dropped_whole() -> None:
    states = [
        fold(UserState(page_id=PAGE, user_id=f"u{i}"), message(T0, user_id=f"u{i}"))
        for i in range(6)
    ]
    by_key = {s.key.encode(): s for s in states}
    index = ReachIndex(RULES, by_key.get, T0)
    for i, (key, state) in enumerate(by_key.items()):
        index.mark(key, i % 2, state)
    index.flush(T0)
    assert index.partials(PAGE, T0) == {}
    index.complete_partition(0)
    assert index.partials(PAGE, T0) == {
        0: {"users": 3, "users:RESPONSE": 3, "users:UTILITY": 3, "users:HUMAN_AGENT": 3}
    }
    index.complete_partition(1)
    index.drop_partition(0)
    assert set(index.partials(PAGE, T0)) == {1}
    assert index.users() == 3
    assert index.partials("another-page", T0) == {1: {}}


def test_otn_tokens_expiring_within_a_week_are_counted() -> None:
    now = T0
    state = UserState(page_id=PAGE, user_id="u1")
    for i, age_days in enumerate((360, 300, 10)):
        state = fold(
            state,
            OtnOptin(
                page_id=PAGE,
                user_id="u1",
                timestamp=now - age_days * D,
                token=f"t{i}",
                topic="restock",
            ),
        )
    index = index_of([state], now)
    totals = page_totals(index, now)
    assert totals["otn_tokens:restock"] == 3
    assert totals["tokens:OTN"] - totals["tokens_after_7d:OTN"] == 1
    assert totals == brute_force([state], now, RULES)
    for days, reachable in ((6, 1), (66, 1), (354, 1), (356, 0)):  # each token in turn lapses
        later = now + days * D
        assert page_totals(index, later) == brute_force([state], later, RULES)
        assert page_totals(index, later).get("otn_users:restock", 0) == reachable


def test_rule_boundaries_are_the_rule_books_dates() -> None:
    boundaries = rule_boundaries(RULES)
    assert at("2026-04-27") in boundaries
    assert at("2026-02-10") in boundaries
    assert boundaries == sorted(set(boundaries))


def test_combine_sums_partitions() -> None:
    assert combine([{"a": 1, "b": 2}, {"a": 3}, {}]) == {"a": 4, "b": 2}
