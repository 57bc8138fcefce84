"""What the dispatcher publishes once a request is settled: events for the window, a done record.

Pure. Every outcome becomes a `SendOutcome`, the token's fate (`TokenSpent` / `TokenReleased` /
`TokenOutcomeUnknown` / `TokenOptedOut`, or nothing when it stays reserved) and the fact Meta told
us (`WindowClosedByMeta`, `UserUnavailable`, `PageRestricted`, a thread taken by another app), all
keyed by the user (page-wide facts by `"<page_id>:"`) so the window folds them in partition order.
Each event's dedup_key is derived from the request_id: publishing it again changes nothing (I2).
A settlement that gives the token back also carries the dispatch log's `released` token record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.decision import Decision
from schemas.events import (
    Event,
    OutcomeStatus,
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
from services.dispatcher.delivery.dispatchlog import Attempt, Done, TokenUse, token_use
from windowgate.meta.graph_errors import Action, GraphVerdict, TokenFate


@dataclass(frozen=True, slots=True)
class Settlement:
    events: tuple[Event, ...]
    done: Done
    released: TokenUse | None = None  # the token goes back: the log frees it with the done


def _released(attempt: Attempt, fate: TokenFate, now: int) -> TokenUse | None:
    return token_use(attempt, now, released=True) if fate == "release" else None


def attempt_for(decision: Decision, now: int) -> Attempt:
    return Attempt(
        request_id=decision.request_id,
        page_id=decision.page_id,
        user_id=decision.user_id,
        at=now,
        platform=decision.platform,
        mechanism=decision.mechanism,
        token=decision.token,
    )


def _common(attempt: Attempt, now: int, kind: str) -> dict[str, Any]:
    return {
        "page_id": attempt.page_id,
        "user_id": attempt.user_id,
        "timestamp": now,
        "platform": attempt.platform,
        "dedup_key": f"dispatch:{attempt.request_id}:{kind}",
    }


def _token_event(attempt: Attempt, fate: TokenFate, now: int) -> Event | None:
    if attempt.token is None or fate == "keep":
        return None
    token, request_id = attempt.token, attempt.request_id
    if fate == "spend":
        return TokenSpent(**_common(attempt, now, fate), token=token, request_id=request_id)
    if fate == "release":
        return TokenReleased(**_common(attempt, now, fate), token=token, request_id=request_id)
    if fate == "unknown":
        return TokenOutcomeUnknown(
            **_common(attempt, now, fate), token=token, request_id=request_id
        )
    return TokenOptedOut(**_common(attempt, now, fate), token=token)


def _fact_event(attempt: Attempt, verdict: GraphVerdict, now: int) -> Event | None:
    fact = verdict.action.fact
    if fact == "window_closed":
        return WindowClosedByMeta(**_common(attempt, now, fact), request_id=attempt.request_id)
    if fact == "user_unavailable":
        return UserUnavailable(
            **_common(attempt, now, fact), error_code=verdict.code, error_subcode=verdict.subcode
        )
    if fact == "page_restricted":
        common = _common(attempt, now, fact)
        common["user_id"] = ""
        return PageRestricted(**common, error_code=verdict.code, error_subcode=verdict.subcode)
    if fact == "thread_owned":
        return ThreadControl(**_common(attempt, now, fact), action="take")
    return None  # opted_out travels as the token's fate


def settle(
    attempt: Attempt,
    verdict: GraphVerdict,
    now: int,
    *,
    action: Action | None = None,
    calls: int = 1,
    graph_status: int | None = None,
    graph_body: dict[str, Any] | None = None,
) -> Settlement:
    """The events and done record for the final answer to `attempt`'s call(s)."""
    act = action or verdict.action
    ok = verdict.error_class == "ok"
    outcome = SendOutcome(
        **_common(attempt, now, "outcome"),
        request_id=attempt.request_id,
        status=act.status,
        message_id=verdict.message_id,
        error_code=None if ok else verdict.code,
        error_subcode=None if ok else verdict.subcode,
        detail=verdict.detail,
    )
    events: list[Event] = [outcome]
    for extra in (_token_event(attempt, act.token, now), _fact_event(attempt, verdict, now)):
        if extra is not None:
            events.append(extra)
    done = Done(
        request_id=attempt.request_id,
        page_id=attempt.page_id,
        user_id=attempt.user_id,
        at=now,
        status=act.status,
        platform=attempt.platform,
        mechanism=attempt.mechanism,
        message_id=verdict.message_id,
        error_code=outcome.error_code,
        error_subcode=outcome.error_subcode,
        detail=verdict.detail,
        graph_status=graph_status,
        graph_body=graph_body,
        calls=calls,
    )
    return Settlement(tuple(events), done, _released(attempt, act.token, now))


def _without_answer(
    attempt: Attempt, now: int, status: OutcomeStatus, fate: TokenFate, detail: str
) -> Settlement:
    outcome = SendOutcome(
        **_common(attempt, now, "outcome"),
        request_id=attempt.request_id,
        status=status,
        detail=detail,
    )
    token = _token_event(attempt, fate, now)
    done = Done(
        request_id=attempt.request_id,
        page_id=attempt.page_id,
        user_id=attempt.user_id,
        at=now,
        status=status,
        platform=attempt.platform,
        mechanism=attempt.mechanism,
        detail=detail,
    )
    events = (outcome,) if token is None else (outcome, token)
    return Settlement(events, done, _released(attempt, fate, now))


def not_sent(attempt: Attempt, now: int, detail: str) -> Settlement:
    """No call was (or will be) made: failed, and the reserved token is free again (R-OTN-4)."""
    return _without_answer(attempt, now, "failed", "release", detail)


def token_taken(attempt: Attempt, now: int, holder: str) -> Settlement:
    """Another request already put this token into a Graph call, or may have (I4): no call.

    Only a faulty upstream grants one token twice. The token is left alone (no TokenReleased):
    releasing it on behalf of this request would free a token the holder may have spent.
    """
    detail = (
        f"token already attempted by request {holder}: not sent (I4, a token goes into one "
        "Graph call at most)"
    )
    return _without_answer(attempt, now, "failed", "keep", detail)


def unknown_after_crash(attempt: Attempt, now: int) -> Settlement:
    """An attempt with no done: the call may or may not have reached Meta. Never resent (I4, I5)."""
    detail = (
        f"the dispatcher stopped after recording the attempt (at {attempt.at}) and before "
        "recording its outcome: the call may have reached Meta; not resent"
    )
    return _without_answer(attempt, now, "unknown", "unknown", detail)
