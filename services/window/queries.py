"""The bodies of the window queries (DESIGN.md §4.3), as plain functions of state and time.

`user_view` answers `GET /v1/pages/{page_id}/users/{user_id}`: the stored state and one entry per
mechanism straight from `windowgate.core.decide.assess` (the verdicts `decide` itself would
reach), so the answer to "could I send now?" is the gateway's own. `reach_view` shapes the
summed reach counters (see `reach`) into `GET /v1/pages/{page_id}/reach`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.codec import to_wire
from schemas.state import PageState, UserState
from services.window.reach import combine
from services.window.store import StoredUser
from windowgate.core.decide import Verdict, assess
from windowgate.core.rulebook import RuleBook
from windowgate.core.timestamps import ms_to_iso


def _time(ms: int | None) -> str | None:
    return None if ms is None else ms_to_iso(ms)


def verdict_view(verdict: Verdict) -> dict[str, Any]:
    return {
        "mechanism": verdict.mechanism,
        "usable": verdict.allowed,
        "until": _time(verdict.valid_until) if verdict.allowed else None,
        "until_ms": verdict.valid_until if verdict.allowed else None,
        "reason": verdict.reason,
        "detail": verdict.detail,
        "why_not": None if verdict.allowed else verdict.detail,
        "rule": verdict.rule,
        "topic": verdict.topic,
        "tag": verdict.tag,
        "token": verdict.token,
    }


def page_view(page: PageState | None) -> dict[str, Any] | None:
    if page is None:
        return None
    view: dict[str, Any] = to_wire(page)
    view["restricted"] = page.restricted
    return view


def user_view(
    page_id: str,
    user_id: str,
    stored: StoredUser | None,
    page: PageState | None,
    now: int,
    rules: RuleBook,
) -> dict[str, Any]:
    """The user's state (an empty one if windowgate never heard of them) and every verdict."""
    state = stored.state if stored is not None else UserState(page_id=page_id, user_id=user_id)
    return {
        "page_id": page_id,
        "user_id": user_id,
        "known": stored is not None,
        "at": ms_to_iso(now),
        "at_ms": now,
        "state": to_wire(state),
        "page": page_view(page),
        "mechanisms": [verdict_view(v) for v in assess(state, now, rules, page)],
    }


def _by(totals: Mapping[str, int], kind: str) -> dict[str, int]:
    prefix = f"{kind}:"
    return {label[len(prefix) :]: n for label, n in totals.items() if label.startswith(prefix)}


def reach_view(
    page_id: str,
    partials: Mapping[int, Mapping[str, int]],
    partitions: int,
    page: PageState | None,
    now: int,
    errors: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Page totals from per-partition counts; says which partitions are missing, if any.

    A restricted page reaches nobody (every send is refused first for the block), so its
    `reachable_now` and `message_tags` are empty (`{}`); its users' own reach is still shown as
    `reachable_if_unblocked`.
    """
    totals = combine(partials.values())
    users = _by(totals, "users")
    restricted = page is not None and page.restricted
    otn_users = _by(totals, "otn_users")
    otn_tokens = _by(totals, "otn_tokens")
    tokens = _by(totals, "tokens")
    later = _by(totals, "tokens_after_7d")
    missing = [p for p in range(partitions) if p not in partials]
    return {
        "page_id": page_id,
        "at": ms_to_iso(now),
        "at_ms": now,
        "users": totals.get("users", 0),
        "reachable_now": {} if restricted else users,
        "reachable_if_unblocked": users,
        "message_tags": {} if restricted else _by(totals, "tag"),
        "otn_topics": {
            topic: {"users": otn_users.get(topic, 0), "tokens": otn_tokens.get(topic, 0)}
            for topic in sorted(set(otn_users) | set(otn_tokens))
        },
        "tokens_expiring_within_7d": {
            mechanism: n - later.get(mechanism, 0) for mechanism, n in sorted(tokens.items())
        },
        "page": page_view(page),
        "complete": not missing,
        "partitions": {"counted": sorted(partials), "missing": missing},
        "errors": dict(errors or {}),
    }
