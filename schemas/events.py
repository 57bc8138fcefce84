"""Events: every fact the state is folded from, from Meta's webhooks and from the dispatcher.

Every event carries the user key it belongs to (`page_id`, `user_id`; `user_id == ""` for page-wide
events), Meta's own `timestamp` in epoch ms (never the arrival time) and a `dedup_key` that is
stable across Meta's redeliveries of the same fact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from schemas.codec import (
    WIRE_VERSION,
    CompactEncoder,
    SchemaError,
    compact_encoder,
    decode_as,
    dumps,
    loads,
)
from schemas.types import Platform

ReactionAction = Literal["react", "unreact"]
RecurringFrequency = Literal["DAILY", "WEEKLY", "MONTHLY"]
RecurringStatusValue = Literal["STOP", "RESUME"]
EnforcementAction = Literal["block", "unblock"]
ThreadControlAction = Literal["pass", "take", "request"]
OutcomeStatus = Literal["sent", "failed", "unknown"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Fields every event shares. Subclasses set KIND, the wire discriminator."""

    KIND: ClassVar[str] = ""

    page_id: str
    user_id: str
    timestamp: int
    platform: Platform = "messenger"
    dedup_key: str = ""

    @property
    def key(self) -> str:
        return event_key(self.page_id, self.user_id)


def event_key(page_id: str, user_id: str) -> str:
    """The key of every keyed topic: a user's events, requests and decisions co-partition."""
    return f"{page_id}:{user_id}"


@dataclass(frozen=True, slots=True)
class Referral:
    source: str | None = None
    type: str | None = None
    ref: str | None = None
    ad_id: str | None = None

    @property
    def from_ad(self) -> bool:
        return self.source == "ADS"


# ---- user actions (R-WIN-2 openers unless said otherwise) -------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived(Event):
    KIND: ClassVar[str] = "message"
    mid: str
    text: str | None = None
    quick_reply_payload: str | None = None
    attachment_types: tuple[str, ...] = ()
    referral: Referral | None = None
    reply_to_mid: str | None = None
    standby: bool = False
    deleted: bool = False  # Instagram `is_deleted`: the user unsent a message; not an opener


@dataclass(frozen=True, slots=True, kw_only=True)
class PostbackReceived(Event):
    KIND: ClassVar[str] = "postback"
    payload: str | None = None
    title: str | None = None
    mid: str | None = None
    referral: Referral | None = None
    standby: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReactionReceived(Event):
    """Only `react` opens the window (R-WIN-2); `unreact` does not (R-WIN-3)."""

    KIND: ClassVar[str] = "reaction"
    action: ReactionAction
    mid: str
    reaction: str | None = None
    emoji: str | None = None
    standby: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferralReceived(Event):
    """An m.me / ig.me link or an ad that led the user into the thread."""

    KIND: ClassVar[str] = "referral"
    referral: Referral
    standby: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginOptin(Event):
    """Checkbox / send-to-Messenger plugin opt-in; `user_id` may be the `user_ref`."""

    KIND: ClassVar[str] = "plugin_optin"
    ref: str | None = None
    user_ref: str | None = None


# ---- seen, not openers (R-WIN-3) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEdited(Event):
    KIND: ClassVar[str] = "message_edit"
    mid: str
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRead(Event):
    KIND: ClassVar[str] = "read"
    watermark: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDelivered(Event):
    KIND: ClassVar[str] = "delivery"
    watermark: int
    mids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEcho(Event):
    """The page's own message echoed back; `user_id` is the recipient."""

    KIND: ClassVar[str] = "echo"
    mid: str
    app_id: str | None = None


# ---- tokens (opt-ins never open the window) -----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OtnOptin(Event):
    """The user tapped Notify Me: one token, one message on `topic` (R-OTN-1)."""

    KIND: ClassVar[str] = "otn_optin"
    token: str
    topic: str
    title: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecurringOptin(Event):
    KIND: ClassVar[str] = "recurring_optin"
    token: str
    topic: str | None = None
    title: str | None = None
    frequency: RecurringFrequency | None = None
    timezone: str | None = None
    expires_at: int | None = None
    token_status: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecurringStatus(Event):
    """STOP / RESUME of a recurring token (both of Meta's spellings arrive here as one value)."""

    KIND: ClassVar[str] = "recurring_status"
    token: str
    status: RecurringStatusValue
    topic: str | None = None
    title: str | None = None


# ---- page and thread --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyEnforcement(Event):
    """Page-wide (`user_id == ""`): `block` stops every send of the page until `unblock`."""

    KIND: ClassVar[str] = "policy_enforcement"
    action: EnforcementAction
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadControl(Event):
    """Handover protocol: who owns the thread now."""

    KIND: ClassVar[str] = "thread_control"
    action: ThreadControlAction
    new_owner_app_id: str | None = None
    previous_owner_app_id: str | None = None
    requested_owner_app_id: str | None = None


# ---- emitted by the dispatcher ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestDecided(Event):
    """A decision taken; an allowed token mechanism reserves its token (R-OTN-4)."""

    KIND: ClassVar[str] = "request_decided"
    decision: Decision


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenEvent(Event):
    """Base of the token life-cycle events; `request_id` is the request that reserved it."""

    token: str
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSpent(TokenEvent):
    KIND: ClassVar[str] = "token_spent"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenReleased(TokenEvent):
    """The call was definitely rejected before delivery (auth, rate limit): usable again."""

    KIND: ClassVar[str] = "token_released"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenOutcomeUnknown(TokenEvent):
    """Timeout / 5xx after the body was sent: never used again automatically (R-OTN-4)."""

    KIND: ClassVar[str] = "token_unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenOptedOut(Event):
    """Meta said 10/1893015: the user stopped notifications for this token's topic."""

    KIND: ClassVar[str] = "token_opted_out"
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOutcome(Event):
    KIND: ClassVar[str] = "send_outcome"
    request_id: str
    status: OutcomeStatus
    message_id: str | None = None
    error_code: int | None = None
    error_subcode: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowClosedByMeta(Event):
    """Meta refused a send as outside the window (10/2018278, 10/2534022): trust Meta."""

    KIND: ClassVar[str] = "window_closed"
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UserUnavailable(Event):
    """551 / 1545041 / 2018108: stop sending to this user until they write again."""

    KIND: ClassVar[str] = "user_unavailable"
    error_code: int | None = None
    error_subcode: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PageRestricted(Event):
    """Page-wide (`user_id == ""`), from Graph errors 10/1893063, 2022 or 190."""

    KIND: ClassVar[str] = "page_restricted"
    error_code: int | None = None
    error_subcode: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelAdded(Event):
    """The page put `label` on the user: through the API, or a label rule of the pages file
    (`source` says which; a rule's source is `rule:<payload>`)."""

    KIND: ClassVar[str] = "label_added"
    label: str
    source: str = "api"


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelRemoved(Event):
    KIND: ClassVar[str] = "label_removed"
    label: str
    source: str = "api"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommentReceived(Event):
    """A comment on the page's post, or a visitor post on the page (`feed` / Instagram
    `comments` webhooks): one private reply within the rule's 7 days (R-WIN-5). Not an opener:
    the thread opens only when the person answers. `user_id` is the author's id as the feed
    webhook gives it (`from.id`), which is not necessarily their PSID."""

    KIND: ClassVar[str] = "comment"
    post_id: str | None = None
    comment_id: str | None = None  # None: a visitor post, replied to by its post_id
    parent_id: str | None = None

    @property
    def target(self) -> str:
        """The id a private reply names: the comment's, else the visitor post's."""
        return self.comment_id or self.post_id or ""


EVENT_TYPES: tuple[type[Event], ...] = (
    MessageReceived,
    PostbackReceived,
    ReactionReceived,
    ReferralReceived,
    PluginOptin,
    MessageEdited,
    MessageRead,
    MessageDelivered,
    MessageEcho,
    OtnOptin,
    RecurringOptin,
    RecurringStatus,
    PolicyEnforcement,
    ThreadControl,
    RequestDecided,
    TokenSpent,
    TokenReleased,
    TokenOutcomeUnknown,
    TokenOptedOut,
    SendOutcome,
    WindowClosedByMeta,
    UserUnavailable,
    PageRestricted,
    LabelAdded,
    LabelRemoved,
    CommentReceived,
)
EVENT_BY_KIND: dict[str, type[Event]] = {t.KIND: t for t in EVENT_TYPES}


_ENCODERS: dict[type[Event], CompactEncoder] = {}


def event_to_wire(event: Event) -> dict[str, Any]:
    """`{"v": WIRE_VERSION, "kind": KIND, **to_compact_wire(event)}`, by the class's own encoder
    (generated once: the generic walk cost ingest several microseconds per event)."""
    cls = type(event)
    encode = _ENCODERS.get(cls)
    if encode is None:
        encode = _ENCODERS[cls] = compact_encoder(cls, {"v": WIRE_VERSION, "kind": cls.KIND})
    return encode(event)


def encode_event(event: Event) -> bytes:
    return dumps(event_to_wire(event))


def event_from_wire(data: Any, path: str = "") -> Event:
    if not isinstance(data, dict):
        raise SchemaError(path, "expected an event object")
    kind = data.get("kind")
    cls = EVENT_BY_KIND.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(f"{path}.kind" if path else "kind", f"unknown event kind {kind!r}")
    version = data.get("v", WIRE_VERSION)
    if version != WIRE_VERSION:
        raise SchemaError(f"{path}.v" if path else "v", f"unsupported wire version {version!r}")
    return decode_as(cls, data, path)


def decode_event(raw: bytes | str) -> Event:
    return event_from_wire(loads(raw, "event"))


from schemas.decision import Decision  # noqa: E402  (RequestDecided refers to it; no cycle at runtime)
