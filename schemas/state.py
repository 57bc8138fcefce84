"""The folded per-user state (and the page-wide state) that every decision is taken against.

Timestamps are Meta's, in epoch ms. Fields that several events can move are kept as maxima or sets
so that folding is idempotent and, where the rule allows, order-free (DESIGN.md I2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from schemas.codec import WIRE_VERSION, decode_as, dumps, loads, to_compact_wire
from schemas.decision import Decision
from schemas.events import RecurringFrequency, event_key
from schemas.types import Platform

TokenStatus = Literal["available", "reserved", "spent", "unknown"]


@dataclass(frozen=True, slots=True)
class OtnToken:
    """One One-Time Notification token: one message on `topic` (R-OTN-1)."""

    WIRE_ALIASES: ClassVar[dict[str, str]] = {
        "token": "t",
        "topic": "tp",
        "created_at": "c",
        "title": "ti",
        "status": "s",
        "request_id": "rq",
        "released": "rl",
    }
    token: str
    topic: str
    created_at: int
    title: str | None = None
    status: TokenStatus = "available"
    request_id: str | None = None
    released: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecurringToken:
    """A recurring-notification / marketing subscription token (R-RN-*, R-MM)."""

    WIRE_ALIASES: ClassVar[dict[str, str]] = {
        "token": "t",
        "created_at": "c",
        "topic": "tp",
        "title": "ti",
        "frequency": "f",
        "timezone": "tz",
        "refreshed_at": "rf",
        "expires_at": "x",
        "token_status": "ts",
        "stopped_at": "st",
        "resumed_at": "rs",
        "last_sent_at": "ls",
        "last_request_id": "lr",
        "prev_sent_at": "ps",
        "released": "rl",
    }
    token: str
    created_at: int
    topic: str | None = None
    title: str | None = None
    frequency: RecurringFrequency | None = None
    timezone: str | None = None
    refreshed_at: int | None = None
    expires_at: int | None = None
    token_status: str | None = None
    stopped_at: int | None = None
    resumed_at: int | None = None
    last_sent_at: int | None = None
    last_request_id: str | None = None
    prev_sent_at: int | None = None
    released: tuple[str, ...] = ()

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None and (
            self.resumed_at is None or self.stopped_at >= self.resumed_at
        )

    def matches(self, topic: str) -> bool:
        return topic in (self.topic, self.title)


@dataclass(frozen=True, slots=True, order=True)
class OptinAsk:
    """A recurring opt-in request decided allowed (R-RN-3 counts them per user and title)."""

    WIRE_ALIASES: ClassVar[dict[str, str]] = {"at": "a", "title": "ti"}
    at: int
    title: str


@dataclass(frozen=True, slots=True)
class UserState:
    """Stored compactly (short aliases, defaults left out): millions of users live in the table."""

    WIRE_ALIASES: ClassVar[dict[str, str]] = {
        "page_id": "p",
        "user_id": "u",
        "platform": "pl",
        "last_opener_at": "lo",
        "last_message_at": "lm",
        "ad_referral_at": "ad",
        "meta_closed_at": "mc",
        "unavailable_at": "ua",
        "primary_at": "pa",
        "standby_at": "sa",
        "otn": "o",
        "recurring": "r",
        "decisions": "d",
        "labels": "lb",
        "optin_asks": "oq",
        "comments": "cm",
    }

    page_id: str
    user_id: str
    platform: Platform = "messenger"
    last_opener_at: int | None = None
    last_message_at: int | None = None
    ad_referral_at: int | None = None
    meta_closed_at: int | None = None
    unavailable_at: int | None = None
    primary_at: int | None = None
    standby_at: int | None = None
    otn: tuple[OtnToken, ...] = ()
    recurring: tuple[RecurringToken, ...] = ()
    decisions: tuple[Decision, ...] = ()
    labels: tuple[str, ...] = ()  # sorted, each once (segments: DESIGN.md §4.6)
    optin_asks: tuple[
        OptinAsk, ...
    ] = ()  # the latest allowed recurring opt-in requests, oldest first
    # The user's recent comments and visitor posts (R-WIN-5), each a one-time right to a private
    # reply with the life-cycle of an OTN token: `token` is the comment / post id, `topic` the
    # recipient field that names it ("comment_id" or "post_id"), `created_at` its time. Oldest
    # first, the newest REMEMBERED_COMMENTS only (windowgate.core.fold).
    comments: tuple[OtnToken, ...] = ()

    @property
    def key(self) -> str:
        return event_key(self.page_id, self.user_id)


@dataclass(frozen=True, slots=True)
class PageState:
    """Page-wide facts (key `"<page_id>:"`): policy-enforcement blocks and Graph restrictions."""

    page_id: str
    blocked_at: int | None = None
    unblocked_at: int | None = None
    block_reason: str | None = None

    @property
    def restricted(self) -> bool:
        return self.blocked_at is not None and (
            self.unblocked_at is None or self.blocked_at >= self.unblocked_at
        )


def encode_user_state(state: UserState) -> bytes:
    wire = to_compact_wire(state)
    wire["v"] = WIRE_VERSION
    return dumps(wire)


def decode_user_state(raw: bytes | str) -> UserState:
    return decode_as(UserState, loads(raw, "user state"))


def encode_page_state(state: PageState) -> bytes:
    wire = to_compact_wire(state)
    wire["v"] = WIRE_VERSION
    return dumps(wire)


def decode_page_state(raw: bytes | str) -> PageState:
    return decode_as(PageState, loads(raw, "page state"))
