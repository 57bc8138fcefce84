"""The state transitions every shell shares: one event folded, one request decided.

The window worker (`services.window.processing`), `windowgate replay` and `windowgate decide`
(`windowgate.offline`) all change a user's state through these two functions, so they cannot
drift apart: what the offline CLI answers is what the worker decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.decision import Decision
from schemas.events import Event, RequestDecided
from schemas.request import SendRequest
from schemas.state import PageState, UserState
from schemas.types import Platform
from windowgate.core.decide import decide
from windowgate.core.fold import empty_state, fold
from windowgate.core.labels import label_events
from windowgate.core.rulebook import RuleBook


def apply_event(state: UserState | None, event: Event) -> UserState:
    """`event` folded into the user's state (a user never seen starts empty)."""
    return fold(state if state is not None else empty_state(event), event)


def decided_event(decision: Decision, platform: Platform) -> RequestDecided:
    """The event that records `decision` in the events topic (its time is the decision's), so
    the events topic alone rebuilds the state (I8)."""
    return RequestDecided(
        page_id=decision.page_id,
        user_id=decision.user_id,
        timestamp=decision.decided_at,
        platform=platform,
        dedup_key=f"decided:{decision.request_id}",
        decision=decision,
    )


@dataclass(frozen=True, slots=True)
class Decided:
    """A request's decision, the user's state after it, and the event that records it (None for
    a duplicate request_id, which changes nothing)."""

    decision: Decision
    state: UserState
    event: RequestDecided | None


def decide_request(
    state: UserState | None,
    request: SendRequest,
    now: int,
    rules: RuleBook,
    page: PageState | None = None,
) -> Decided:
    """Decide `request` at `now` and fold the decision back (reserving an allowed token)."""
    if state is None:
        state = UserState(
            page_id=request.page_id, user_id=request.user_id, platform=request.platform
        )
    decision = decide(state, request, now, rules, page)
    if decision.duplicate or request.sender_action is not None:
        # A sender action is no message: it reserves nothing and is not remembered as a send.
        return Decided(decision, state, None)
    event = decided_event(decision, state.platform)
    return Decided(decision, fold(state, event), event)


@dataclass(frozen=True, slots=True)
class Folded:
    """A user's state after an event, and the label events the page's label rules derived from
    it (already folded into `state`): the caller records them in the events topic, so the log
    alone rebuilds the labels (I8) and a replay folds them without the rules."""

    state: UserState
    derived: tuple[Event, ...] = ()


def apply_event_with_rules(state: UserState | None, event: Event, rules: RuleBook) -> Folded:
    """`apply_event`, then the page's label rules on the user's payload. A derived label event
    that would change nothing (the label is already there, or already gone) is left out: it
    would only lengthen the log, and the labels come out the same whichever way the log is
    folded (each label ends as its last add or remove in the log says)."""
    folded = apply_event(state, event)
    page = rules.pages.get(event.page_id)
    if page is None or not page.label_rules:
        return Folded(folded)
    derived: list[Event] = []
    for label_event in label_events(event, page.label_rules):
        after = fold(folded, label_event)
        if after != folded:
            derived.append(label_event)
            folded = after
    return Folded(folded, tuple(derived))
