"""`fold(state, event) -> state`: one small pure function per event kind (eventsourcing style).

Every transition is idempotent (applying an event twice equals once) and, where the rule is
order-free, commutative: times are kept as maxima, tokens as sets keyed by token, and a token's
life-cycle only moves forward (available → reserved → unknown → spent; a release names the request
it undoes, and a request once released can never reserve again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from schemas.decision import Decision
from schemas.events import (
    CommentReceived,
    Event,
    LabelAdded,
    LabelRemoved,
    MessageDelivered,
    MessageEcho,
    MessageEdited,
    MessageRead,
    MessageReceived,
    OtnOptin,
    PageRestricted,
    PluginOptin,
    PolicyEnforcement,
    PostbackReceived,
    ReactionReceived,
    RecurringOptin,
    RecurringStatus,
    ReferralReceived,
    RequestDecided,
    SendOutcome,
    ThreadControl,
    TokenOptedOut,
    TokenOutcomeUnknown,
    TokenReleased,
    TokenSpent,
    UserUnavailable,
    WindowClosedByMeta,
)
from schemas.state import OptinAsk, OtnToken, PageState, RecurringToken, TokenStatus, UserState
from schemas.types import TOKEN_MECHANISMS

# How many past decisions a user's state remembers for duplicate request_ids (I3). Older duplicates
# are decided afresh; tokens stay safe regardless, because a spent token is never granted again.
REMEMBERED_DECISIONS = 32
# How many allowed recurring opt-in requests a user's state remembers (R-RN-3 counts them per
# title): the latest by time, whatever the order they are folded in. `decide` refuses rather than
# guess when all of them fall inside the rule's period.
REMEMBERED_OPTIN_ASKS = 16

# How many comments / visitor posts a user's state remembers for private replies (R-WIN-5): the
# newest ones. An older one forgotten cannot be replied to here; the dispatch log still holds its
# reply (I4) for DISPATCHER_LOG_RETENTION_H (7 days), so a forgotten comment never gets two.
REMEMBERED_COMMENTS = 16
# Forward-only order of an OTN token's life-cycle; a later rank never goes back (except release).
_STATUS_RANK: dict[TokenStatus, int] = {"available": 0, "reserved": 1, "unknown": 2, "spent": 3}

E = TypeVar("E", bound=Event)
S = TypeVar("S")


def _max(current: int | None, value: int) -> int:
    return value if current is None or value > current else current


# ---- the window and the thread -----------------------------------------------------------------


def _user_action(
    state: UserState, event: Event, opens: bool, standby: bool, message: bool = False
) -> UserState:
    """One `replace` per event: fold is the hot path of the window service."""
    changes: dict[str, Any] = {}
    ts = event.timestamp
    if opens:
        changes["last_opener_at"] = _max(state.last_opener_at, ts)
    if standby:
        changes["standby_at"] = _max(state.standby_at, ts)
    else:
        changes["primary_at"] = _max(state.primary_at, ts)
    if message:
        changes["last_message_at"] = _max(state.last_message_at, ts)
        referral = getattr(event, "referral", None)
        if referral is not None and referral.from_ad:
            changes["ad_referral_at"] = _max(state.ad_referral_at, ts)
    if state.platform != event.platform:
        changes["platform"] = event.platform
    return replace(state, **changes)


def _on_message(state: UserState, event: MessageReceived) -> UserState:
    if event.deleted:
        return state
    return _user_action(state, event, True, event.standby, message=True)


def _on_postback(state: UserState, event: PostbackReceived) -> UserState:
    return _user_action(state, event, True, event.standby)


def _on_referral(state: UserState, event: ReferralReceived) -> UserState:
    return _user_action(state, event, True, event.standby)


def _on_reaction(state: UserState, event: ReactionReceived) -> UserState:
    return _user_action(state, event, event.action == "react", event.standby)


def _on_plugin_optin(state: UserState, event: PluginOptin) -> UserState:
    return _user_action(state, event, True, False)


def _on_thread_control(state: UserState, event: ThreadControl) -> UserState:
    """`pass` is delivered to the app that receives the thread, `take` to the one that lost it."""
    if event.action == "pass":
        return replace(state, primary_at=_max(state.primary_at, event.timestamp))
    if event.action == "take":
        return replace(state, standby_at=_max(state.standby_at, event.timestamp))
    return state


def _on_window_closed(state: UserState, event: WindowClosedByMeta) -> UserState:
    return replace(state, meta_closed_at=_max(state.meta_closed_at, event.timestamp))


def _on_unavailable(state: UserState, event: UserUnavailable) -> UserState:
    return replace(state, unavailable_at=_max(state.unavailable_at, event.timestamp))


def _on_label_added(state: UserState, event: LabelAdded) -> UserState:
    if event.label in state.labels:
        return state
    return replace(state, labels=tuple(sorted((*state.labels, event.label))))


def _on_label_removed(state: UserState, event: LabelRemoved) -> UserState:
    if event.label not in state.labels:
        return state
    return replace(state, labels=tuple(label for label in state.labels if label != event.label))


# ---- OTN tokens --------------------------------------------------------------------------------


def _with_otn(state: UserState, token: str, change: Callable[[OtnToken], OtnToken]) -> UserState:
    """`change` applied to the one-time token `token`: an OTN token, or a comment's private-reply
    right (R-WIN-5), which has the same life-cycle."""
    for name in ("otn", "comments"):
        tokens: tuple[OtnToken, ...] = getattr(state, name)
        for i, current in enumerate(tokens):
            if current.token == token:
                updated = change(current)
                if updated == current:
                    return state
                changes: dict[str, Any] = {name: (*tokens[:i], updated, *tokens[i + 1 :])}
                return replace(state, **changes)
    return state


def _on_otn_optin(state: UserState, event: OtnOptin) -> UserState:
    if any(t.token == event.token for t in state.otn):
        return state
    token = OtnToken(
        token=event.token, topic=event.topic, created_at=event.timestamp, title=event.title
    )
    return replace(
        state, otn=tuple(sorted((*state.otn, token), key=lambda t: (t.created_at, t.token)))
    )


def _reserve_otn(token: OtnToken, request_id: str) -> OtnToken:
    if token.status != "available" or request_id in token.released:
        return token
    return replace(token, status="reserved", request_id=request_id)


def _advance_otn(status: TokenStatus, request_id: str) -> Callable[[OtnToken], OtnToken]:
    def change(token: OtnToken) -> OtnToken:
        if _STATUS_RANK[status] <= _STATUS_RANK[token.status]:
            return token
        return replace(token, status=status, request_id=request_id)

    return change


def _release_otn(request_id: str) -> Callable[[OtnToken], OtnToken]:
    def change(token: OtnToken) -> OtnToken:
        released = token.released if request_id in token.released else (*token.released, request_id)
        if token.status == "reserved" and token.request_id == request_id:
            return replace(token, status="available", request_id=None, released=released)
        return replace(token, released=released)

    return change


def _on_comment(state: UserState, event: CommentReceived) -> UserState:
    """Remember the comment / visitor post as a private-reply right (R-WIN-5); a redelivery or an
    edit keeps the first one. The newest REMEMBERED_COMMENTS are kept, whatever the order seen."""
    target = event.target
    if not target or any(t.token == target for t in state.comments):
        return state
    field = "comment_id" if event.comment_id else "post_id"
    comment = OtnToken(token=target, topic=field, created_at=event.timestamp)
    ordered = sorted((*state.comments, comment), key=lambda t: (t.created_at, t.token))
    kept = tuple(ordered[-REMEMBERED_COMMENTS:])
    return state if kept == state.comments else replace(state, comments=kept)


# ---- recurring / marketing tokens --------------------------------------------------------------


def _with_recurring(
    state: UserState,
    token: str,
    created_at: int,
    change: Callable[[RecurringToken], RecurringToken],
) -> UserState:
    for i, current in enumerate(state.recurring):
        if current.token == token:
            updated = change(current)
            if updated == current:
                return state
            recurring = (*state.recurring[:i], updated, *state.recurring[i + 1 :])
            return replace(state, recurring=_by_age(recurring))
    fresh = change(RecurringToken(token=token, created_at=created_at))
    return replace(state, recurring=_by_age((*state.recurring, fresh)))


def _by_age(tokens: tuple[RecurringToken, ...]) -> tuple[RecurringToken, ...]:
    return tuple(sorted(tokens, key=lambda t: (t.created_at, t.token)))


def _on_recurring_optin(state: UserState, event: RecurringOptin) -> UserState:
    def change(token: RecurringToken) -> RecurringToken:
        # A STOP seen before any opt-in leaves a stub whose created_at is no opt-in's time.
        first_optin = token.refreshed_at is None
        created = event.timestamp if first_optin else min(token.created_at, event.timestamp)
        newest = token.refreshed_at is None or event.timestamp >= token.refreshed_at
        if not newest:
            return replace(token, created_at=created)
        return replace(
            token,
            created_at=created,
            refreshed_at=event.timestamp,
            topic=event.topic or token.topic,
            title=event.title or token.title,
            frequency=event.frequency or token.frequency,
            timezone=event.timezone or token.timezone,
            expires_at=event.expires_at or token.expires_at,
            token_status=event.token_status or token.token_status,
        )

    return _with_recurring(state, event.token, event.timestamp, change)


def _on_recurring_status(state: UserState, event: RecurringStatus) -> UserState:
    def change(token: RecurringToken) -> RecurringToken:
        if token.refreshed_at is None and event.timestamp < token.created_at:
            token = replace(token, created_at=event.timestamp)  # a stub: keep the earliest sign
        if event.status == "STOP":
            return replace(token, stopped_at=_max(token.stopped_at, event.timestamp))
        return replace(token, resumed_at=_max(token.resumed_at, event.timestamp))

    return _with_recurring(state, event.token, event.timestamp, change)


def _reserve_recurring(token: RecurringToken, request_id: str, at: int) -> RecurringToken:
    if request_id in token.released or token.last_request_id == request_id:
        return token
    if token.last_sent_at is not None and at < token.last_sent_at:
        return token
    return replace(
        token, prev_sent_at=token.last_sent_at, last_sent_at=at, last_request_id=request_id
    )


def _release_recurring(request_id: str) -> Callable[[RecurringToken], RecurringToken]:
    def change(token: RecurringToken) -> RecurringToken:
        if request_id in token.released:
            return token
        released = (*token.released, request_id)
        if token.last_request_id == request_id:
            return replace(
                token,
                last_sent_at=token.prev_sent_at,
                prev_sent_at=None,
                last_request_id=None,
                released=released,
            )
        return replace(token, released=released)

    return change


# ---- the dispatcher's facts --------------------------------------------------------------------


def _remember(decisions: tuple[Decision, ...], decision: Decision) -> tuple[Decision, ...]:
    if any(d.request_id == decision.request_id for d in decisions):
        return decisions
    ordered = sorted((*decisions, decision), key=lambda d: (d.decided_at, d.request_id))
    return tuple(ordered[-REMEMBERED_DECISIONS:])


def _reserve(state: UserState, token: str, request_id: str, at: int) -> UserState:
    if any(t.token == token for t in state.otn) or any(t.token == token for t in state.comments):
        return _with_otn(state, token, lambda t: _reserve_otn(t, request_id))
    if any(t.token == token for t in state.recurring):
        return _with_recurring(state, token, at, lambda t: _reserve_recurring(t, request_id, at))
    return state


def _on_request_decided(state: UserState, event: RequestDecided) -> UserState:
    decision = event.decision
    state = replace(state, decisions=_remember(state.decisions, decision))
    if decision.allowed and decision.token and decision.mechanism in TOKEN_MECHANISMS:
        state = _reserve(state, decision.token, decision.request_id, decision.decided_at)
    if decision.allowed and decision.optin_request == "notification_messages" and decision.topic:
        state = _remember_ask(state, OptinAsk(decision.decided_at, decision.topic))
    return state


def _remember_ask(state: UserState, ask: OptinAsk) -> UserState:
    """The set of asks, cut to the latest few: idempotent and order-free (a top-N of a set)."""
    if ask in state.optin_asks:
        return state
    asks = tuple(sorted((*state.optin_asks, ask))[-REMEMBERED_OPTIN_ASKS:])
    return state if asks == state.optin_asks else replace(state, optin_asks=asks)


def _on_token_spent(state: UserState, event: TokenSpent) -> UserState:
    return _with_otn(state, event.token, _advance_otn("spent", event.request_id))


def _on_token_unknown(state: UserState, event: TokenOutcomeUnknown) -> UserState:
    return _with_otn(state, event.token, _advance_otn("unknown", event.request_id))


def _on_token_released(state: UserState, event: TokenReleased) -> UserState:
    state = _with_otn(state, event.token, _release_otn(event.request_id))
    if any(t.token == event.token for t in state.recurring):
        state = _with_recurring(
            state, event.token, event.timestamp, _release_recurring(event.request_id)
        )
    return state


def _on_token_opted_out(state: UserState, event: TokenOptedOut) -> UserState:
    """Meta's 10/1893015 for a recurring token is a STOP; for an OTN token it is spent for good."""
    state = _with_otn(state, event.token, _advance_otn("spent", ""))
    if any(t.token == event.token for t in state.recurring):
        stop = RecurringStatus(
            page_id=event.page_id,
            user_id=event.user_id,
            timestamp=event.timestamp,
            token=event.token,
            status="STOP",
        )
        state = _on_recurring_status(state, stop)
    return state


# ---- dispatch ----------------------------------------------------------------------------------

_UserHandler = Callable[[UserState, Any], UserState]
_USER_HANDLERS: dict[type[Event], _UserHandler] = {
    MessageReceived: _on_message,
    PostbackReceived: _on_postback,
    ReferralReceived: _on_referral,
    ReactionReceived: _on_reaction,
    PluginOptin: _on_plugin_optin,
    ThreadControl: _on_thread_control,
    WindowClosedByMeta: _on_window_closed,
    UserUnavailable: _on_unavailable,
    OtnOptin: _on_otn_optin,
    RecurringOptin: _on_recurring_optin,
    RecurringStatus: _on_recurring_status,
    RequestDecided: _on_request_decided,
    TokenSpent: _on_token_spent,
    TokenOutcomeUnknown: _on_token_unknown,
    TokenReleased: _on_token_released,
    TokenOptedOut: _on_token_opted_out,
    LabelAdded: _on_label_added,
    LabelRemoved: _on_label_removed,
    CommentReceived: _on_comment,
}


INERT_EVENTS: dict[type[Event], str] = {
    MessageEdited: "an edit is not an opener (R-WIN-3) and moves no token",
    MessageRead: "a read receipt is not an opener (R-WIN-3)",
    MessageDelivered: "a delivery receipt is not an opener (R-WIN-3)",
    MessageEcho: "the page's own message is not an opener (R-WIN-3)",
    SendOutcome: "the token's fate travels in its own Token* event; the outcome is for reporting",
}
"""Event kinds the fold knows and deliberately ignores, each with why. Every kind of
`schemas.events.EVENT_TYPES` is folded (user or page) or listed here; a test holds that, so a new
event type cannot silently do nothing."""


def fold(state: UserState, event: Event) -> UserState:
    """The user's state after `event`. Kinds that change nothing (reads, echoes…) return `state`."""
    handler = _USER_HANDLERS.get(type(event))
    return state if handler is None else handler(state, event)


def _on_policy(state: PageState, event: PolicyEnforcement) -> PageState:
    if event.action == "block":
        if state.blocked_at is not None and event.timestamp < state.blocked_at:
            return state
        return replace(state, blocked_at=event.timestamp, block_reason=event.reason)
    return replace(state, unblocked_at=_max(state.unblocked_at, event.timestamp))


def _on_page_restricted(state: PageState, event: PageRestricted) -> PageState:
    if state.blocked_at is not None and event.timestamp < state.blocked_at:
        return state
    reason = f"Graph API error {event.error_code}/{event.error_subcode}"
    return replace(state, blocked_at=event.timestamp, block_reason=reason)


_PAGE_HANDLERS: dict[type[Event], Callable[[PageState, Any], PageState]] = {
    PolicyEnforcement: _on_policy,
    PageRestricted: _on_page_restricted,
}


def fold_page(state: PageState, event: Event) -> PageState:
    """The page-wide state (key `"<page_id>:"`) after `event`."""
    handler = _PAGE_HANDLERS.get(type(event))
    return state if handler is None else handler(state, event)


def is_page_event(event: Event) -> bool:
    return type(event) in _PAGE_HANDLERS


def empty_state(event: Event) -> UserState:
    return UserState(page_id=event.page_id, user_id=event.user_id, platform=event.platform)


def fold_all(state: UserState, events: list[Event]) -> UserState:
    for event in events:
        state = fold(state, event)
    return state
