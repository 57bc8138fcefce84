"""Meta webhook bodies → typed events: the only place that knows Meta's webhook shapes.

`normalise(body)` takes the already-parsed JSON of one POST and returns every event in it plus an
`Unsupported` item for every element it could not understand. Pure: no I/O, no clock, no env.

Contract (platform-rules §1 "Time", §3, §4, §6):
- A body that is not a webhook envelope at all raises `EnvelopeError` (ingest answers 400).
  Anything wrong *inside* an element becomes an `Unsupported`, never an exception: one odd element
  must not make Meta retry (and eventually unsubscribe) a whole batch of good ones.
- Every entry and every element of `messaging[]` and `standby[]` is read; standby elements carry
  `standby=True` where the event type has that field. `changes[]` (feed / comments) is reported as
  `Unsupported` per change until private replies exist.
- `timestamp` is Meta's own, in epoch ms (seconds and digit strings accepted, see `to_epoch_ms`);
  missing → the entry's `time` → the read / delivery watermark → `Unsupported`.
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
    read                 read:{page}:{user}:{watermark}
    delivery             dlv:{page}:{user}:{watermark}
    message_edit         edit:{mid}:{num_edit}  |  without num_edit: edit:{mid}:{timestamp}
    otn_optin            otn:{token}
    recurring_optin      rn:{token}:{timestamp}
    recurring_status     rns:{token}:{status}:{timestamp}
    policy_enforcement   pe:{page}:{action}:{timestamp}
    thread_control       tc:{page}:{user}:{action}:{timestamp}
    plugin_optin         po:{page}:{user}:{timestamp}:{ref}

Speed: one pass, a dict from element key to one small parser per kind, no regexes, no copies
(the ingest benchmark needs ≥ 20,000 bodies/s on one core).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from schemas.codec import SchemaError
from schemas.events import (
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
from windowgate.timestamps import to_epoch_ms

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


# A parser gets (value under its key, whole element, page id, platform, timestamp or None, standby)
# and returns the event, or the reason (a sentence) why the element is unsupported.
Parser = Callable[[Any, dict[str, Any], str, Platform, int | None, bool], Event | str]

_NO_TIMESTAMP = "the element has no usable `timestamp` and its entry no usable `time`"
_NO_SENDER = "the element has no usable `sender.id`"


# ---- small helpers -------------------------------------------------------------------------------


def _id(value: Any) -> str | None:
    """Meta ids arrive as strings or numbers; numbers are stringified, anything else is no id."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_ID:
        return str(value)
    return None


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
    if not isinstance(value, dict):
        return None
    return Referral(
        source=_str(value.get("source")),
        type=_str(value.get("type")),
        ref=_str(value.get("ref")),
        ad_id=_id(value.get("ad_id")),
    )


def _not_object(key: str, value: Any) -> str:
    return f"`{key}` should be an object but is {_brief(value)}"


# ---- one parser per event kind -------------------------------------------------------------------


def _message(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    """`message`: a user message, or (with `is_echo`) the page's own message echoed back."""
    if not isinstance(value, dict):
        return _not_object("message", value)
    echo = value.get("is_echo")
    if echo is not None and echo is not False:
        return _echo(value, element, page, platform, ts)
    mid = _str(value.get("mid"))
    if not mid:
        return "`message` has no `mid`"
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    if ts is None:
        return _NO_TIMESTAMP
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
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
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
        standby=sb,
    )


def _echo(
    value: dict[str, Any], element: dict[str, Any], page: str, platform: Platform, ts: int | None
) -> Event | str:
    """The sender of an echo is the page itself: the user is the recipient."""
    mid = _str(value.get("mid"))
    if not mid:
        return "echoed `message` has no `mid`"
    user = _party_id(element, "recipient")
    if user is None:
        return "the echo has no usable `recipient.id`"
    if ts is None:
        return _NO_TIMESTAMP
    return MessageEcho(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
        dedup_key=f"echo:{mid}",
        mid=mid,
        app_id=_id(value.get("app_id")),
    )


def _postback(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    if not isinstance(value, dict):
        return _not_object("postback", value)
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    if ts is None:
        return _NO_TIMESTAMP
    payload = _str(value.get("payload"))
    mid = _str(value.get("mid"))
    return PostbackReceived(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
        dedup_key=f"pb:{mid}" if mid else f"pb:{page}:{user}:{ts}:{payload or ''}",
        payload=payload,
        title=_str(value.get("title")),
        mid=mid or None,
        referral=_referral(value.get("referral")),
        standby=sb,
    )


_REACTION_ACTIONS: Final[dict[str, ReactionAction]] = {"react": "react", "unreact": "unreact"}


def _reaction(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    if not isinstance(value, dict):
        return _not_object("reaction", value)
    raw_action = value.get("action")
    action = _REACTION_ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
    if action is None:
        return f"`reaction.action` is {_brief(raw_action)}, neither 'react' nor 'unreact'"
    mid = _str(value.get("mid"))
    if not mid:
        return "`reaction` has no `mid` (the reacted-to message)"
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    if ts is None:
        return _NO_TIMESTAMP
    reaction = _str(value.get("reaction"))
    return ReactionReceived(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
        dedup_key=f"rx:{page}:{user}:{mid}:{action}:{reaction or ''}:{ts}",
        action=action,
        mid=mid,
        reaction=reaction,
        emoji=_str(value.get("emoji")),
        standby=sb,
    )


def _referral_event(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    """Element-level `referral`: an m.me / ig.me link or an ad into an existing thread."""
    referral = _referral(value)
    if referral is None:
        return _not_object("referral", value)
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    if ts is None:
        return _NO_TIMESTAMP
    return ReferralReceived(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
        dedup_key=f"ref:{page}:{user}:{ts}:{referral.source or ''}:{referral.ref or ''}",
        referral=referral,
        standby=sb,
    )


def _read(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    if not isinstance(value, dict):
        return _not_object("read", value)
    watermark = to_epoch_ms(value.get("watermark"))
    if watermark is None:
        return "`read` has no usable `watermark`"
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    return MessageRead(
        page_id=page,
        user_id=user,
        timestamp=watermark if ts is None else ts,
        platform=platform,
        dedup_key=f"read:{page}:{user}:{watermark}",
        watermark=watermark,
    )


def _delivery(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    if not isinstance(value, dict):
        return _not_object("delivery", value)
    watermark = to_epoch_ms(value.get("watermark"))
    if watermark is None:
        return "`delivery` has no usable `watermark`"
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    mids = value.get("mids")
    return MessageDelivered(
        page_id=page,
        user_id=user,
        timestamp=watermark if ts is None else ts,
        platform=platform,
        dedup_key=f"dlv:{page}:{user}:{watermark}",
        watermark=watermark,
        mids=tuple(m for m in mids if isinstance(m, str)) if isinstance(mids, list) else (),
    )


def _message_edit(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    if not isinstance(value, dict):
        return _not_object("message_edit", value)
    mid = _str(value.get("mid"))
    if not mid:
        return "`message_edit` has no `mid`"
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    if ts is None:
        return _NO_TIMESTAMP
    num_edit = value.get("num_edit")
    if isinstance(num_edit, bool) or not isinstance(num_edit, int):
        num_edit = ts
    return MessageEdited(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
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


def _optin(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    """`optin`: OTN (§3), recurring opt-in / stop / resume (§4), or a plugin opt-in (no type)."""
    if not isinstance(value, dict):
        return _not_object("optin", value)
    kind = value.get("type")
    if kind == "one_time_notif_req":
        return _otn_optin(value, element, page, platform, ts)
    if kind == "notification_messages":
        return _recurring(value, element, page, platform, ts)
    if kind is not None:
        # A plugin opt-in opens the window (R-WIN-2): never guess that for a type we do not know.
        return f"`optin.type` {_brief(kind)} is not a known opt-in type"
    ref = _str(value.get("ref"))
    user_ref = _str(value.get("user_ref"))
    user = _party_id(element, "sender") or user_ref
    if not user:
        return "plugin `optin` has neither `sender.id` nor `optin.user_ref`"
    if ts is None:
        return _NO_TIMESTAMP
    return PluginOptin(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
        dedup_key=f"po:{page}:{user}:{ts}:{ref or ''}",
        ref=ref,
        user_ref=user_ref,
    )


def _otn_optin(
    value: dict[str, Any], element: dict[str, Any], page: str, platform: Platform, ts: int | None
) -> Event | str:
    token = _str(value.get("one_time_notif_token"))
    if not token:
        return "OTN `optin` has no `one_time_notif_token`"
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    if ts is None:
        return _NO_TIMESTAMP
    return OtnOptin(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
        dedup_key=f"otn:{token}",
        token=token,
        topic=_str(value.get("payload")) or "",  # no payload: a token no topic request matches
        title=_str(value.get("title")),
    )


def _recurring(
    value: dict[str, Any], element: dict[str, Any], page: str, platform: Platform, ts: int | None
) -> Event | str:
    token = _str(value.get("notification_messages_token"))
    if not token:
        return "recurring `optin` has no `notification_messages_token`"
    user = _party_id(element, "sender")
    if user is None:
        return _NO_SENDER
    if ts is None:
        return _NO_TIMESTAMP
    raw_status = value.get("notification_messages_status")
    if raw_status is not None:
        status = _RECURRING_STATUS.get(raw_status.upper()) if isinstance(raw_status, str) else None
        if status is None:
            return f"`notification_messages_status` {_brief(raw_status)} is neither STOP nor RESUME"
        return RecurringStatus(
            page_id=page,
            user_id=user,
            timestamp=ts,
            platform=platform,
            dedup_key=f"rns:{token}:{status}:{ts}",
            token=token,
            status=status,
            topic=_str(value.get("payload")),
            title=_str(value.get("title")),
        )
    frequency = value.get("notification_messages_frequency")
    return RecurringOptin(
        page_id=page,
        user_id=user,
        timestamp=ts,
        platform=platform,
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


def _policy_enforcement(
    value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
) -> Event | str:
    """Page-wide, so `user_id` is "" (the element carries no sender)."""
    if not isinstance(value, dict):
        return _not_object("policy-enforcement", value)
    raw_action = value.get("action")
    action = _ENFORCEMENT_ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
    if action is None:
        return f"policy-enforcement `action` is {_brief(raw_action)}, neither block nor unblock"
    if ts is None:
        return _NO_TIMESTAMP
    return PolicyEnforcement(
        page_id=page,
        user_id="",
        timestamp=ts,
        platform=platform,
        dedup_key=f"pe:{page}:{action}:{ts}",
        action=action,
        reason=_str(value.get("reason")),
    )


def _thread_control(action: ThreadControlAction, key: str) -> Parser:
    """pass / take / request_thread_control differ only in their action name."""

    def parse(
        value: Any, element: dict[str, Any], page: str, platform: Platform, ts: int | None, sb: bool
    ) -> Event | str:
        if not isinstance(value, dict):
            return _not_object(key, value)
        user = _party_id(element, "sender")
        if user is None:
            return _NO_SENDER
        if ts is None:
            return _NO_TIMESTAMP
        return ThreadControl(
            page_id=page,
            user_id=user,
            timestamp=ts,
            platform=platform,
            dedup_key=f"tc:{page}:{user}:{action}:{ts}",
            action=action,
            new_owner_app_id=_id(value.get("new_owner_app_id")),
            previous_owner_app_id=_id(value.get("previous_owner_app_id")),
            requested_owner_app_id=_id(value.get("requested_owner_app_id")),
        )

    return parse


_PARSERS: Final[dict[str, Parser]] = {
    "message": _message,
    "postback": _postback,
    "reaction": _reaction,
    "referral": _referral_event,
    "read": _read,
    "delivery": _delivery,
    "message_edit": _message_edit,
    "optin": _optin,
    "policy-enforcement": _policy_enforcement,
    "policy_enforcement": _policy_enforcement,
    "pass_thread_control": _thread_control("pass", "pass_thread_control"),
    "take_thread_control": _thread_control("take", "take_thread_control"),
    "request_thread_control": _thread_control("request", "request_thread_control"),
}
"""Element key → parser. A key not here is not an event kind (see the module docstring)."""

_ROUTING_KEYS: Final = frozenset({"sender", "recipient", "timestamp"})
_ELEMENT_LISTS: Final = (("messaging", False), ("standby", True))


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
        entry_time = to_epoch_ms(entry.get("time"))
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
            _changes(changes, i, page, unsupported)
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
    ts = to_epoch_ms(element.get("timestamp"))
    if ts is None:
        ts = entry_time
    reasons: list[str] | None = None
    matched = False
    for key, value in element.items():
        parser = _PARSERS.get(key)
        if parser is None:
            continue
        matched = True
        try:
            result = parser(value, element, page, platform, ts, standby)
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


def _changes(changes: Any, i: int, page: str | None, unsupported: list[Unsupported]) -> None:
    """`changes[]` (feed, comments, mentions): reported, unhandled, until private replies exist."""
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
        field = change.get("field") if isinstance(change, dict) else None
        change_value = change.get("value") if isinstance(change, dict) else None
        author = change_value.get("from") if isinstance(change_value, dict) else None
        unsupported.append(
            Unsupported(
                reason=(
                    f"`changes` not handled (field {_brief(field)}): "
                    "private replies are not supported yet"
                ),
                path=f"entry[{i}].changes[{k}]",
                page_id=page,
                user_id=_id(author.get("id")) if isinstance(author, dict) else None,
                raw=change,
            )
        )
