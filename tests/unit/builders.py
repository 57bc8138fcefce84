"""Small constructors for events and requests, so tests say what matters and nothing else."""

from __future__ import annotations

from typing import Any

from schemas import (
    Decision,
    MessageReceived,
    OtnOptin,
    RecurringOptin,
    RecurringStatus,
    Referral,
    RequestDecided,
    SendRequest,
    UserState,
)
from schemas.events import CommentReceived
from windowgate.core.timeconst import DAY_MS, HOUR_MS
from windowgate.core.timestamps import parse_iso_ms

PAGE = "682498171943165"
USER = "1254459154682919"
T0 = parse_iso_ms("2026-05-04T09:00:00Z")
H = HOUR_MS
D = DAY_MS
TEXT: dict[str, Any] = {"text": "hello"}


def at(text: str) -> int:
    return parse_iso_ms(text)


def empty(page: str = PAGE, user: str = USER, platform: Any = "messenger") -> UserState:
    return UserState(page_id=page, user_id=user, platform=platform)


def message(ts: int, mid: str = "m1", ad: bool = False, **kw: Any) -> MessageReceived:
    referral = Referral(source="ADS", type="OPEN_THREAD", ad_id="1") if ad else None
    return MessageReceived(
        page_id=kw.pop("page_id", PAGE),
        user_id=kw.pop("user_id", USER),
        timestamp=ts,
        mid=mid,
        referral=referral,
        dedup_key=f"msg:{mid}",
        **kw,
    )


def otn(ts: int, token: str = "otn-1", topic: str = "restock") -> OtnOptin:
    return OtnOptin(page_id=PAGE, user_id=USER, timestamp=ts, token=token, topic=topic)


def rn_optin(
    ts: int, token: str = "rn-1", topic: str = "weekly-deals", **kw: Any
) -> RecurringOptin:
    return RecurringOptin(
        page_id=PAGE,
        user_id=USER,
        timestamp=ts,
        token=token,
        topic=topic,
        title="Weekly deals",
        **kw,
    )


def rn_status(ts: int, status: Any, token: str = "rn-1") -> RecurringStatus:
    return RecurringStatus(page_id=PAGE, user_id=USER, timestamp=ts, token=token, status=status)


def request(request_id: str = "r1", **kw: Any) -> SendRequest:
    """A request with a plain text message unless the test says otherwise (decide refuses a
    request without a sendable message)."""
    kw.setdefault("message", TEXT)
    return SendRequest(request_id=request_id, page_id=PAGE, user_id=USER, **kw)


def decided(decision: Decision) -> RequestDecided:
    return RequestDecided(
        page_id=decision.page_id,
        user_id=decision.user_id,
        timestamp=decision.decided_at,
        decision=decision,
    )


def comment(
    ts: int, comment_id: str | None = None, post_id: str | None = "post-1", user: str = USER
) -> CommentReceived:
    """A comment (or, without comment_id, a visitor post) by `user` on the page's feed."""
    return CommentReceived(
        page_id=PAGE,
        user_id=user,
        timestamp=ts,
        post_id=post_id,
        comment_id=comment_id,
        dedup_key=f"cm:{comment_id or post_id}",
    )


def allowed(mechanism: Any, request_id: str = "r1", **kw: Any) -> Decision:
    """An allowed decision for USER on PAGE at T0, by `mechanism` (token, tag... in `kw`)."""
    return Decision(
        request_id=request_id,
        page_id=PAGE,
        user_id=USER,
        decided_at=T0,
        allowed=True,
        reason=kw.pop("reason", "window_open"),
        detail="",
        rules_version="t",
        mechanism=mechanism,
        **kw,
    )
