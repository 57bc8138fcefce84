"""The offline gateway behind `windowgate decide`: webhooks in, decisions out, all in memory.

No broker, no clock, no printing: the caller passes every webhook body and every `now`. It holds
what the window service will hold (one `UserState` per `"<page_id>:<user_id>"`, one `PageState` per
page) and applies the dispatcher's own facts the way the services will:

- a decision is folded back into the user's state as `RequestDecided` (I3: a repeated request_id
  gets its first decision back; an allowed OTN / recurring / marketing decision reserves its token);
- offline there is no Graph call, so an allowed token decision is taken as sent: a `TokenSpent`
  follows (I4: the token is never granted again);
- a duplicate decision changes nothing.

The internal events carry `now` as their timestamp. Webhook events later than the `now` they are
applied at are not folded: the state at `now` cannot know what a user does after it (answering
"the user acted at" a later time); they are handed back for the caller to report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schemas.decision import Decision
from schemas.events import Event, TokenSpent, event_key
from schemas.request import SendRequest
from schemas.state import PageState, UserState
from schemas.types import TOKEN_MECHANISMS
from windowgate.core.fold import fold, fold_page, is_page_event
from windowgate.core.rulebook import RuleBook
from windowgate.core.transition import apply_event_with_rules, decide_request
from windowgate.meta.normalise import Unsupported, normalise

__all__ = ["Applied", "OfflineGateway"]


@dataclass(frozen=True, slots=True)
class Applied:
    """What one webhook body left unfolded: elements not understood, events later than `now`."""

    unsupported: tuple[Unsupported, ...] = ()
    later: tuple[Event, ...] = ()


class OfflineGateway:
    """Per-user and per-page state folded from webhooks, and decisions taken against it."""

    def __init__(self, rules: RuleBook) -> None:
        self.rules = rules
        self.users: dict[str, UserState] = {}
        self.pages: dict[str, PageState] = {}

    # ---- what Meta tells us --------------------------------------------------------------------

    def apply_event(self, event: Event) -> None:
        """Fold one event into its user's state, or into its page's state if it is page-wide."""
        if is_page_event(event):
            page = self.pages.get(event.page_id) or PageState(page_id=event.page_id)
            self.pages[event.page_id] = fold_page(page, event)
            return
        # the pages' label rules apply here as in the window worker (derived labels folded too)
        self.users[event.key] = apply_event_with_rules(
            self.users.get(event.key), event, self.rules
        ).state

    def apply_events(self, events: Iterable[Event]) -> None:
        for event in events:
            self.apply_event(event)

    def apply_webhook(self, body: object, now: int | None = None) -> Applied:
        """Fold every event of one parsed webhook body, except those later than `now` (epoch ms;
        None: no limit); return what was not understood and the later events.

        Raises `windowgate.meta.normalise.EnvelopeError` (a `SchemaError`) when `body` is not a
        webhook envelope at all; nothing is folded then.
        """
        normalised = normalise(body)
        if now is None:
            self.apply_events(normalised.events)
            return Applied(normalised.unsupported)
        later = tuple(e for e in normalised.events if e.timestamp > now)
        self.apply_events(e for e in normalised.events if e.timestamp <= now)
        return Applied(normalised.unsupported, later)

    # ---- what callers ask ----------------------------------------------------------------------

    def state(self, page_id: str, user_id: str) -> UserState | None:
        return self.users.get(event_key(page_id, user_id))

    def page_state(self, page_id: str) -> PageState | None:
        return self.pages.get(page_id)

    def decide(self, request: SendRequest, now: int) -> Decision:
        """Decide `request` at `now` (epoch ms) and record the decision (and any token spend)."""
        key = request.key
        decided = decide_request(
            self.users.get(key), request, now, self.rules, self.pages.get(request.page_id)
        )
        decision, state, platform = decided.decision, decided.state, decided.state.platform
        if decided.event is None:
            return decision
        if decision.allowed and decision.token and decision.mechanism in TOKEN_MECHANISMS:
            state = fold(
                state,
                TokenSpent(
                    page_id=request.page_id,
                    user_id=request.user_id,
                    timestamp=now,
                    platform=platform,
                    dedup_key=f"spent:{decision.token}:{decision.request_id}",
                    token=decision.token,
                    request_id=decision.request_id,
                ),
            )
        self.users[key] = state
        return decision
