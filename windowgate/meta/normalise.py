"""Meta webhook bodies → typed events: the only place that knows Meta's webhook shapes.

`normalise(body)` takes the already-parsed JSON of one POST and returns every event in it plus an
`Unsupported` item for every element it could not understand. Pure: no I/O, no clock, no env.

Contract (platform-rules §1 "Time", §3, §4, §6):
- A body that is not a webhook envelope at all raises `EnvelopeError` (ingest answers 400).
  Anything wrong *inside* an element becomes an `Unsupported`, never an exception: one odd element
  must not make Meta retry (and eventually unsubscribe) a whole batch of good ones.
- Every entry and every element of `messaging[]` and `standby[]` is read; standby elements carry
  `standby=True` where the event type has that field. `changes[]`: a comment or visitor post
  (Pages `feed`, Instagram `comments`) is a `CommentReceived` (R-WIN-5, see `_change`); every
  other change is `Unsupported`.
- `timestamp` is Meta's own, in epoch ms (seconds and digit strings accepted, see `to_epoch_ms`);
  missing or 0 → the entry's `time` → the read / delivery watermark → `Unsupported`.
- Every element but an echo is addressed to the entry's page: a `recipient.id` that is another
  page is `Unsupported`. The user is the sender (the recipient of an echo) and must be a Meta id,
  digits only (PSIDs and Instagram-scoped ids alike); a plugin opt-in without one uses `user_ref`.
- An Instagram read (`messaging_seen`) names the `mid` it saw instead of a watermark: it is read as
  a read up to the element's time.
- An element's kind is the key that names it (`message`, `postback`, …); auxiliary keys next to a
  kind (`lead` of a lead-ads referral, `prior_message`, …) are ignored. An element with two kind
  keys yields two events; one with none is `Unsupported`, naming the keys seen.

Deduplication keys (`Event.dedup_key`): stable across Meta's redeliveries of one fact, distinct
for distinct facts. `mid` alone is not enough: reactions carry the reacted-to mid, reads and
deliveries only a watermark, opt-ins no id at all. `None` parts render as "". No platform prefix:
mids and tokens are globally unique, and page ids differ between Messenger and Instagram.

    kind                 dedup_key
    message              msg:{mid}        (Instagram `is_deleted`: msgdel:{mid}, not an opener)
    echo                 echo:{mid}
    postback             pb:{mid}  |  without mid: pb:{page}:{user}:{timestamp}:{payload}
    reaction             rx:{page}:{user}:{mid}:{action}:{reaction}:{timestamp}
    referral             ref:{page}:{user}:{timestamp}:{source}:{ref}
    read                 read:{page}:{user}:{watermark}  |  Instagram, no watermark: readmid:{mid}
    delivery             dlv:{page}:{user}:{watermark}
    message_edit         edit:{mid}:{num_edit}  |  without num_edit: edit:{mid}:{timestamp}
    otn_optin            otn:{token}
    recurring_optin      rn:{token}:{timestamp}
    recurring_status     rns:{token}:{status}:{timestamp}
    policy_enforcement   pe:{page}:{action}:{timestamp}
    thread_control       tc:{page}:{user}:{action}:{timestamp}
    plugin_optin         po:{page}:{user}:{timestamp}:{ref}
    comment              cm:{comment_id}  |  visitor post: cm:{post_id}  (an edit: the same key)

Speed: one pass, a dict from element key to one small builder per kind, no regexes, no copies
(the ingest benchmark needs ≥ 20,000 bodies/s on one core).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from schemas.codec import SchemaError
from schemas.events import (
    CommentReceived,
    EnforcementAction,
    Event,
    MessageDelivered,
    MessageEcho,
    MessageEdited,
    MessageRead,
    MessageReceived,
    OtnOptin,
    PluginOptin,
    PolicyEnforcement,
    PostbackReceived,
    ReactionAction,
    ReactionReceived,
    RecurringFrequency,
    RecurringOptin,
    RecurringStatus,
    RecurringStatusValue,
    Referral,
    ReferralReceived,
    ThreadControl,
    ThreadControlAction,
)
from schemas.types import Platform
from windowgate.core.timestamps import to_epoch_ms

__all__ = [
    "INTERNAL_ERROR_REASON",
    "OBJECT_PLATFORMS",
    "EnvelopeError",
    "Normalised",
    "Unsupported",
    "normalise",
]

OBJECT_PLATFORMS: Final[dict[str, Platform]] = {"page": "messenger", "instagram": "instagram"}
"""The envelope `object` values we accept, and the platform each one means."""

INTERNAL_ERROR_REASON: Final = "internal error while parsing this element (a normalise bug)"
"""Prefix of the reason a parser crash is reported under; tests assert it never appears."""

_MAX_ID = 2**64
_BRIEF = 60


class EnvelopeError(SchemaError):
    """The body is not a webhook envelope (`field` names where); ingest answers HTTP 400."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsupported:
    """An element (or change, or entry) that produced no event: kept for logs and counters."""

    reason: str
    path: str
    page_id: str | None = None
    user_id: str | None = None
    raw: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Normalised:
    """One body's result: events in body order, and what produced none (neither is ever dropped)."""

    events: tuple[Event, ...] = ()
    unsupported: tuple[Unsupported, ...] = ()


@dataclass(frozen=True, slots=True)
class _Element:
    """One element being read: where it came from, and its time (the entry's when it has none)."""

    raw: dict[str, Any]
    page: str
    platform: Platform
    ts: int | None
    standby: bool


# A builder gets (value under its key, the element, the user id, the time) once `_who` has found
# a usable user and time, and returns the event, or the reason (a sentence) it cannot be one.
Builder = Callable[[dict[str, Any], _Element, str, int], Event | str]

UserSource = Literal["sender", "recipient", "sender_or_user_ref", "page"]
"""Where an event's user comes from: the sender (most kinds), the recipient (echoes: the page
sent them), the sender or else `optin.user_ref` (plugin opt-ins), or nobody (page-wide events)."""


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one kind of element is read: where its user comes from, and its builder."""

    build: Builder
    user: UserSource = "sender"
    watermark_time: bool = False  # reads / deliveries: the watermark stands in for a missing time


# The key that names an element's kind → the `_Kind` to read its value with (or why none fits).
Select = Callable[[dict[str, Any]], "_Kind | str"]

_NO_TIMESTAMP = "the element has no usable `timestamp` and its entry no usable `time`"


# ---- small helpers -------------------------------------------------------------------------------


def _id(value: Any) -> str | None:
    """Meta ids arrive as strings or numbers; numbers are stringified, anything else is no id."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_ID:
        return str(value)
    return None


def _meta_id(value: str) -> bool:
    """PSIDs, Instagram-scoped ids and page ids are all digits; anything else is not Meta's."""
    return value.isascii() and value.isdigit()


def _time(value: Any) -> int | None:
    """A Meta time as epoch ms; 0 is "no time" (producers write it for unset), never 1970."""
    ms = to_epoch_ms(value)
    return ms or None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _party_id(element: dict[str, Any], role: str) -> str | None:
    party = element.get(role)
    return _id(party.get("id")) if isinstance(party, dict) else None


def _brief(value: Any) -> str:
    """A short, safe rendering of a value for a reason sentence (never a huge or deep repr)."""
    if isinstance(value, str):
        return repr(value if len(value) <= _BRIEF else value[:_BRIEF] + "…")
    if value is None or isinstance(value, bool | int | float):
        return repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    return f"a {type(value).__name__}"


def _referral(value: Any) -> Referral | None:
    return _referral_of(value) if isinstance(value, dict) else None


def _referral_of(value: dict[str, Any]) -> Referral:
    return Referral(
        source=_str(value.get("source")),
        type=_str(value.get("type")),
        ref=_str(value.get("ref")),
        ad_id=_id(value.get("ad_id")),
    )


def _not_object(key: str, value: Any) -> str:
    return f"`{key}` should be an object but is {_brief(value)}"


def _who(kind: _Kind, value: dict[str, Any], el: _Element) -> tuple[str, int] | str:
    """The user and the time of the element's event, or why it has none: the one place the
    sender, recipient and timestamp guards live."""
    element = el.raw
    if kind.user != "recipient" and "recipient" in element:
        # Everything but an echo is addressed to the page; another page's element must not open
        # a window (or block sends) for this one.
        recipient = _party_id(element, "recipient")
        if recipient != el.page:
            return (
                f"`recipient.id` {_brief(recipient)} is not the entry's page {el.page}: "
                "the element was not addressed to this page"
            )
    role = "recipient" if kind.user == "recipient" else "sender"
    user = "" if kind.user == "page" else _party_id(element, role)
    if user is None and kind.user == "sender_or_user_ref":
        user = _str(value.get("user_ref"))
        if not user:
            return "plugin `optin` has neither `sender.id` nor `optin.user_ref`"
    elif user is None:
        return f"the element has no usable `{role}.id`"
    elif user and not _meta_id(user):
        return (
            f"`{role}.id` {_brief(user)} is not a Meta id "
            "(page-scoped and Instagram-scoped ids are digits only)"
        )
    ts = el.ts
    if ts is None and kind.watermark_time:
        ts = _time(value.get("watermark"))
    if ts is None:
        return _NO_TIMESTAMP
    return user, ts


# ---- one builder per event kind ------------------------------------------------------------------


def _message(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    mid = _str(value.get("mid"))
    if not mid:
        return "`message` has no `mid`"
    quick_reply = value.get("quick_reply")
    reply_to = value.get("reply_to")
    attachments = value.get("attachments")
    types: tuple[str, ...] = ()
    if isinstance(attachments, list):
        types = tuple(
            a["type"] for a in attachments if isinstance(a, dict) and isinstance(a.get("type"), str)
        )
    deleted = value.get("is_deleted") is True
    return MessageReceived(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"msgdel:{mid}" if deleted else f"msg:{mid}",
        deleted=deleted,
        mid=mid,
        text=_str(value.get("text")),
        quick_reply_payload=(
            _str(quick_reply.get("payload")) if isinstance(quick_reply, dict) else None
        ),
        attachment_types=types,
        referral=_referral(value.get("referral")),
        reply_to_mid=_str(reply_to.get("mid")) if isinstance(reply_to, dict) else None,
        standby=el.standby,
    )


def _echo(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    """The sender of an echo is the page itself: the user is the recipient."""
    mid = _str(value.get("mid"))
    if not mid:
        return "echoed `message` has no `mid`"
    return MessageEcho(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"echo:{mid}",
        mid=mid,
        app_id=_id(value.get("app_id")),
    )


def _postback(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    payload = _str(value.get("payload"))
    mid = _str(value.get("mid"))
    return PostbackReceived(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"pb:{mid}" if mid else f"pb:{el.page}:{user}:{ts}:{payload or ''}",
        payload=payload,
        title=_str(value.get("title")),
        mid=mid or None,
        referral=_referral(value.get("referral")),
        standby=el.standby,
    )


_REACTION_ACTIONS: Final[dict[str, ReactionAction]] = {"react": "react", "unreact": "unreact"}


def _reaction(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    raw_action = value.get("action")
    action = _REACTION_ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
    if action is None:
        return f"`reaction.action` is {_brief(raw_action)}, neither 'react' nor 'unreact'"
    mid = _str(value.get("mid"))
    if not mid:
        return "`reaction` has no `mid` (the reacted-to message)"
    reaction = _str(value.get("reaction"))
    return ReactionReceived(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"rx:{el.page}:{user}:{mid}:{action}:{reaction or ''}:{ts}",
        action=action,
        mid=mid,
        reaction=reaction,
        emoji=_str(value.get("emoji")),
        standby=el.standby,
    )


def _referral_event(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    """Element-level `referral`: an m.me / ig.me link or an ad into an existing thread."""
    referral = _referral_of(value)
    return ReferralReceived(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"ref:{el.page}:{user}:{ts}:{referral.source or ''}:{referral.ref or ''}",
        referral=referral,
        standby=el.standby,
    )


def _read(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    """Messenger reads carry a watermark (everything before it was read); Instagram's
    `messaging_seen` only the `mid` it saw, which is a read up to the element's time."""
    watermark = _time(value.get("watermark"))
    if watermark is not None:
        dedup_key = f"read:{el.page}:{user}:{watermark}"
    else:
        mid = _str(value.get("mid"))
        if not mid:
            return "`read` has neither a usable `watermark` nor a `mid`"
        watermark, dedup_key = ts, f"readmid:{mid}"
    return MessageRead(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=dedup_key,
        watermark=watermark,
    )


def _delivery(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    watermark = _time(value.get("watermark"))
    if watermark is None:
        return "`delivery` has no usable `watermark`"
    mids = value.get("mids")
    return MessageDelivered(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"dlv:{el.page}:{user}:{watermark}",
        watermark=watermark,
        mids=tuple(m for m in mids if isinstance(m, str)) if isinstance(mids, list) else (),
    )


def _message_edit(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    mid = _str(value.get("mid"))
    if not mid:
        return "`message_edit` has no `mid`"
    num_edit = value.get("num_edit")
    if isinstance(num_edit, bool) or not isinstance(num_edit, int):
        num_edit = ts
    return MessageEdited(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"edit:{mid}:{num_edit}",
        mid=mid,
        text=_str(value.get("text")),
    )


_RECURRING_STATUS: Final[dict[str, RecurringStatusValue]] = {
    "STOP NOTIFICATIONS": "STOP",
    "STOP_NOTIFICATIONS": "STOP",
    "RESUME NOTIFICATIONS": "RESUME",
    "RESUME_NOTIFICATIONS": "RESUME",
}
_FREQUENCIES: Final[dict[str, RecurringFrequency]] = {
    "DAILY": "DAILY",
    "WEEKLY": "WEEKLY",
    "MONTHLY": "MONTHLY",
}


def _plugin_optin(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    ref = _str(value.get("ref"))
    return PluginOptin(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"po:{el.page}:{user}:{ts}:{ref or ''}",
        ref=ref,
        user_ref=_str(value.get("user_ref")),
    )


def _otn_optin(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    token = _str(value.get("one_time_notif_token"))
    if not token:
        return "OTN `optin` has no `one_time_notif_token`"
    return OtnOptin(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"otn:{token}",
        token=token,
        topic=_str(value.get("payload")) or "",  # no payload: a token no topic request matches
        title=_str(value.get("title")),
    )


def _recurring(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    token = _str(value.get("notification_messages_token"))
    if not token:
        return "recurring `optin` has no `notification_messages_token`"
    raw_status = value.get("notification_messages_status")
    if raw_status is not None:
        status = _RECURRING_STATUS.get(raw_status.upper()) if isinstance(raw_status, str) else None
        if status is None:
            return f"`notification_messages_status` {_brief(raw_status)} is neither STOP nor RESUME"
        return RecurringStatus(
            page_id=el.page,
            user_id=user,
            timestamp=ts,
            platform=el.platform,
            dedup_key=f"rns:{token}:{status}:{ts}",
            token=token,
            status=status,
            topic=_str(value.get("payload")),
            title=_str(value.get("title")),
        )
    frequency = value.get("notification_messages_frequency")
    return RecurringOptin(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"rn:{token}:{ts}",
        token=token,
        topic=_str(value.get("payload")),
        title=_str(value.get("title")),
        frequency=_FREQUENCIES.get(frequency.upper()) if isinstance(frequency, str) else None,
        timezone=_str(value.get("notification_messages_timezone")),
        expires_at=to_epoch_ms(value.get("token_expiry_timestamp")),
        token_status=_str(value.get("user_token_status")),
    )


_ENFORCEMENT_ACTIONS: Final[dict[str, EnforcementAction]] = {"block": "block", "unblock": "unblock"}


def _policy_enforcement(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
    """Page-wide, so `user_id` is "" (the element carries no sender)."""
    raw_action = value.get("action")
    action = _ENFORCEMENT_ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
    if action is None:
        return f"policy-enforcement `action` is {_brief(raw_action)}, neither block nor unblock"
    return PolicyEnforcement(
        page_id=el.page,
        user_id=user,
        timestamp=ts,
        platform=el.platform,
        dedup_key=f"pe:{el.page}:{action}:{ts}",
        action=action,
        reason=_str(value.get("reason")),
    )


def _thread_control(action: ThreadControlAction) -> Builder:
    """pass / take / request_thread_control differ only in their action name."""

    def build(value: dict[str, Any], el: _Element, user: str, ts: int) -> Event | str:
        return ThreadControl(
            page_id=el.page,
            user_id=user,
            timestamp=ts,
            platform=el.platform,
            dedup_key=f"tc:{el.page}:{user}:{action}:{ts}",
            action=action,
            new_owner_app_id=_id(value.get("new_owner_app_id")),
            previous_owner_app_id=_id(value.get("previous_owner_app_id")),
            requested_owner_app_id=_id(value.get("requested_owner_app_id")),
        )

    return build


# ---- from an element's key to its kind -----------------------------------------------------------

_MESSAGE: Final = _Kind(_message)
_ECHO: Final = _Kind(_echo, user="recipient")
_OTN: Final = _Kind(_otn_optin)
_RECURRING: Final = _Kind(_recurring)
_PLUGIN: Final = _Kind(_plugin_optin, user="sender_or_user_ref")


def _always(kind: _Kind) -> Select:
    return lambda value: kind


def _message_kind(value: dict[str, Any]) -> _Kind | str:
    """`message`: a user message, or (with `is_echo`) the page's own message echoed back."""
    echo = value.get("is_echo")
    return _MESSAGE if echo is None or echo is False else _ECHO


def _optin_kind(value: dict[str, Any]) -> _Kind | str:
    """`optin`: OTN (§3), recurring opt-in / stop / resume (§4), or a plugin opt-in (no type)."""
    kind = value.get("type")
    if kind == "one_time_notif_req":
        return _OTN
    if kind == "notification_messages":
        return _RECURRING
    if kind is not None:
        # A plugin opt-in opens the window (R-WIN-2): never guess that for a type we do not know.
        return f"`optin.type` {_brief(kind)} is not a known opt-in type"
    return _PLUGIN


_POLICY: Final = _always(_Kind(_policy_enforcement, user="page"))

_KINDS: Final[dict[str, Select]] = {
    "message": _message_kind,
    "postback": _always(_Kind(_postback)),
    "reaction": _always(_Kind(_reaction)),
    "referral": _always(_Kind(_referral_event)),
    "read": _always(_Kind(_read, watermark_time=True)),
    "delivery": _always(_Kind(_delivery, watermark_time=True)),
    "message_edit": _always(_Kind(_message_edit)),
    "optin": _optin_kind,
    "policy-enforcement": _POLICY,
    "policy_enforcement": _POLICY,
    "pass_thread_control": _always(_Kind(_thread_control("pass"))),
    "take_thread_control": _always(_Kind(_thread_control("take"))),
    "request_thread_control": _always(_Kind(_thread_control("request"))),
}
"""Element key → its kind. A key not here is not an event kind (see the module docstring)."""

_ROUTING_KEYS: Final = frozenset({"sender", "recipient", "timestamp"})
_ELEMENT_LISTS: Final = (("messaging", False), ("standby", True))


def _read_kind(key: str, select: Select, value: Any, el: _Element) -> Event | str:
    """The event under one key of an element, or why there is none."""
    if not isinstance(value, dict):
        return _not_object(key, value)
    kind = select(value)
    if isinstance(kind, str):
        return kind
    who = _who(kind, value, el)
    if isinstance(who, str):
        return who
    user, ts = who
    return kind.build(value, el, user, ts)


# ---- the envelope --------------------------------------------------------------------------------


def normalise(body: object) -> Normalised:
    """Every event of one webhook body, plus what was not understood. Raises only EnvelopeError."""
    if not isinstance(body, dict):
        raise EnvelopeError("", f"the webhook body should be a JSON object but is {_brief(body)}")
    obj = body.get("object")
    platform = OBJECT_PLATFORMS.get(obj) if isinstance(obj, str) else None
    if platform is None:
        expected = " or ".join(map(repr, OBJECT_PLATFORMS))
        raise EnvelopeError("object", f"expected {expected}, got {_brief(obj)}")
    entries = body.get("entry")
    if not isinstance(entries, list):
        raise EnvelopeError("entry", f"should be a list but is {_brief(entries)}")

    events: list[Event] = []
    unsupported: list[Unsupported] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise EnvelopeError(f"entry[{i}]", f"should be an object but is {_brief(entry)}")
        page = _id(entry.get("id"))
        entry_time = _time(entry.get("time"))
        seen = False
        for list_name, standby in _ELEMENT_LISTS:
            elements = entry.get(list_name)
            if elements is None:
                continue
            seen = True
            if not isinstance(elements, list):
                unsupported.append(
                    Unsupported(
                        reason=f"`{list_name}` should be a list but is {_brief(elements)}",
                        path=f"entry[{i}].{list_name}",
                        page_id=page,
                        raw=elements,
                    )
                )
                continue
            for j, element in enumerate(elements):
                if not isinstance(element, dict):
                    reason = f"the element should be an object but is {_brief(element)}"
                elif page is None:
                    reason = f"the entry has no usable `id` (page id): {_brief(entry.get('id'))}"
                else:
                    reason = _element(element, page, platform, entry_time, standby, events)
                    if not reason:
                        continue
                unsupported.append(
                    Unsupported(
                        reason=reason,
                        path=f"entry[{i}].{list_name}[{j}]",
                        page_id=page,
                        user_id=_party_id(element, "sender") if isinstance(element, dict) else None,
                        raw=element,
                    )
                )
        changes = entry.get("changes")
        if changes is not None:
            seen = True
            _changes(changes, i, page, platform, entry_time, events, unsupported)
        if not seen:
            keys = ", ".join(str(k) for k in entry) or "nothing"
            unsupported.append(
                Unsupported(
                    reason=f"the entry has no `messaging`, `standby` or `changes` (saw: {keys})",
                    path=f"entry[{i}]",
                    page_id=page,
                    raw=entry,
                )
            )
    return Normalised(events=tuple(events), unsupported=tuple(unsupported))


def _element(
    element: dict[str, Any],
    page: str,
    platform: Platform,
    entry_time: int | None,
    standby: bool,
    events: list[Event],
) -> str:
    """Append the element's event(s) to `events`; return "" or why (part of) it is unsupported."""
    ts = _time(element.get("timestamp"))
    el = _Element(element, page, platform, entry_time if ts is None else ts, standby)
    reasons: list[str] | None = None
    matched = False
    for key, value in element.items():
        select = _KINDS.get(key)
        if select is None:
            continue
        matched = True
        try:
            result = _read_kind(key, select, value, el)
        except Exception as exc:  # a bug must not fail the batch; tests assert this never happens
            result = f"{INTERNAL_ERROR_REASON}: {type(exc).__name__} in `{key}`"
        if isinstance(result, str):
            reasons = [result] if reasons is None else [*reasons, result]
        else:
            events.append(result)
    if not matched:
        seen = [str(k) for k in element if k not in _ROUTING_KEYS]
        if not seen:
            return "the element carries no event, only sender/recipient/timestamp"
        return f"no supported event kind in the element (saw: {', '.join(seen)})"
    return "; ".join(reasons) if reasons else ""


def _changes(
    changes: Any,
    i: int,
    page: str | None,
    platform: Platform,
    entry_time: int | None,
    events: list[Event],
    unsupported: list[Unsupported],
) -> None:
    """`changes[]`: comments and visitor posts become events; any other change is reported."""
    if not isinstance(changes, list):
        unsupported.append(
            Unsupported(
                reason=f"`changes` should be a list but is {_brief(changes)}",
                path=f"entry[{i}].changes",
                page_id=page,
                raw=changes,
            )
        )
        return
    for k, change in enumerate(changes):
        change_value = change.get("value") if isinstance(change, dict) else None
        author = change_value.get("from") if isinstance(change_value, dict) else None
        if page is None:
            result: Event | str = "the entry has no usable `id` (page id)"
        else:
            try:
                result = _change(change, page, platform, entry_time)
            except Exception as exc:  # a bug must not fail the batch; tests assert it never does
                result = f"{INTERNAL_ERROR_REASON}: {type(exc).__name__} in `changes`"
        if not isinstance(result, str):
            events.append(result)
            continue
        unsupported.append(
            Unsupported(
                reason=result if result.startswith("`changes`") else f"`changes`: {result}",
                path=f"entry[{i}].changes[{k}]",
                page_id=page,
                user_id=_id(author.get("id")) if isinstance(author, dict) else None,
                raw=change,
            )
        )


_COMMENT_FIELDS: Final[dict[Platform, str]] = {"messenger": "feed", "instagram": "comments"}
"""The `changes[].field` that carries comments on each platform (Pages `feed`, Instagram
`comments`; Instagram `live_comments` allow a reply only during the broadcast: not read)."""
_VISITOR_POSTS: Final = frozenset({"post", "status", "photo", "video"})
"""Pages `feed` items that are a post by someone else on the page (a private reply names its
post_id); `comment` names its comment_id; other items (reactions, shares, ...) allow none."""
_NEW: Final = frozenset({"add", "edited"})


def _change(change: Any, page: str, platform: Platform, entry_time: int | None) -> Event | str:
    """One change as a CommentReceived (R-WIN-5), or why it is none.

    Keying: the event's user is the author's id as the webhook gives it (`from.id`), which for a
    Facebook comment need not be the author's PSID; a private reply is decided against that key
    and addressed to Meta by the comment / post id, and when the person answers, their messages
    arrive under their PSID (the window opens there, R-WIN-5).
    """
    if not isinstance(change, dict):
        return f"the change should be an object but is {_brief(change)}"
    field, value = change.get("field"), change.get("value")
    if field != _COMMENT_FIELDS[platform]:
        return (
            f"`changes` field {_brief(field)} not handled "
            f"(only {_COMMENT_FIELDS[platform]!r}: comments and visitor posts)"
        )
    if not isinstance(value, dict):
        return _not_object("value", value)
    if platform == "instagram":
        media = value.get("media")
        post_id = _id(media.get("id")) if isinstance(media, dict) else None
        comment_id = _id(value.get("id"))
        if not comment_id:
            return "Instagram comment has no `id`"
    else:
        item, verb = value.get("item"), value.get("verb")
        post_id, comment_id = _id(value.get("post_id")), None
        if verb not in _NEW:
            return f"feed `verb` {_brief(verb)}: not a new comment or post (no private reply)"
        if item == "comment":
            comment_id = _id(value.get("comment_id"))
            if not comment_id:
                return "feed comment has no `comment_id`"
        elif item in _VISITOR_POSTS:
            if not post_id:
                return f"feed {item} has no `post_id`"
        else:
            return f"feed item {_brief(item)} allows no private reply"
    author = value.get("from")
    user = _id(author.get("id")) if isinstance(author, dict) else None
    if user is None:
        return "the change has no `from.id`: its author is unknown (cannot be keyed)"
    if user == page:
        return "the page's own comment or post (no private reply to oneself)"
    if not _meta_id(user):
        return f"`from.id` {_brief(user)} is not a Meta id (digits only)"
    ts = _time(value.get("created_time")) or entry_time
    if ts is None:
        return "the change has no usable `created_time` and its entry no usable `time`"
    target = comment_id or post_id
    return CommentReceived(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
        dedup_key=f"cm:{target}",
        post_id=post_id,
        comment_id=comment_id,
        parent_id=_id(value.get("parent_id")),
    )
