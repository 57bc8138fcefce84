"""The Graph API call for one allowed decision: path, body and rate class (platform-rules.md §7).

Pure. The mechanism the decision names fixes the recipient and `messaging_type`:

    mechanism    POST to                     recipient / delivery data        messaging_type (+tag)
    RESPONSE     /{v}/{page}/messages        {"id": user}                     RESPONSE
    UPDATE       /{v}/{page}/messages        {"id": user}                     UPDATE
    HUMAN_AGENT  /{v}/{page}/messages        {"id": user}                     TAG HUMAN_AGENT
    MESSAGE_TAG  /{v}/{page}/messages        {"id": user}                     MESSAGE_TAG + tag
    UTILITY      /{v}/{page}/messages        {"id": user}                     UTILITY
    OTN          /{v}/{page}/messages        {"one_time_notif_token": T}      none (Meta's OTN doc)
    RECURRING    /{v}/{page}/messages        {"notification_messages_token"}  none
    MARKETING    /{v}/act_{account}/messages messenger_delivery_data.subscription_token, and the
                                             campaign's message_id (from message.message_id)
    PRIVATE_REPLY /{v}/{page}/messages       {"comment_id": C} or {"post_id": P}  none (Meta's doc)

A decision whose `recipient` is `user_ref` (a checkbox plugin's opt-in, R-WIN-2) addresses
`{"user_ref": user}` instead of `{"id": user}`.

The message body is the request's own `message` (carried on the decisions topic); its shape is
checked by `windowgate.core.message.message_problem`, the check `decide` already ran before it
allowed the request, so an allowed decision only meets CannotSend here for what the window cannot
see (a page setting missing on the delivery side, a record written by an older version). Every other
field of the caller's Send API body (`graph_fields`: `notification_type`, `persona_id`, `reply_to`,
`metadata`, anything unknown) goes out unchanged; windowgate sets only the recipient, the
`messaging_type` and `tag` of the decided mechanism, and the message.

A sender action (`sender_action` typing_on / typing_off / mark_seen / react / unreact in
`graph_fields`, no message) goes out as `{"recipient": {"id": user}, "sender_action": ...}` plus its
other fields (a reaction's `payload`), only under a window mechanism: it is not a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from schemas.decision import Decision, DecisionRecord
from schemas.types import TOKEN_MECHANISMS, Mechanism
from windowgate.core.message import message_problem
from windowgate.core.pages import PageConfig

RateClass = Literal["text", "media"]

MEDIA_TYPES = frozenset({"audio", "video"})
"""Attachment types Meta limits to 10 calls/s per page (M-RATE); everything else is 300/s."""

SENDER_ACTIONS = frozenset({"typing_on", "typing_off", "mark_seen", "react", "unreact"})
"""Meta's `sender_action` values: typing indicators, read receipts, reactions (not messages)."""

WINDOWGATE_SETS = frozenset({"recipient", "messaging_type", "tag", "message", "access_token"})
"""Fields the call's body takes from the decision, never from `graph_fields` (the token travels
in a header)."""

WINDOW_MECHANISMS = frozenset({"RESPONSE", "UPDATE", "HUMAN_AGENT"})


class CannotSend(ValueError):
    """The decision is allowed but no valid Graph call can be built for it; `detail` says why."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class GraphCall:
    path: str
    body: dict[str, Any]
    rate_class: RateClass
    page_id: str


def rate_class(message: dict[str, Any] | None) -> RateClass:
    attachment = (message or {}).get("attachment")
    kinds: list[Any] = []
    if isinstance(attachment, dict):
        kinds.append(attachment.get("type"))
    attachments = (message or {}).get("attachments")
    if isinstance(attachments, list):
        kinds.extend(a.get("type") for a in attachments if isinstance(a, dict))
    return "media" if any(k in MEDIA_TYPES for k in kinds) else "text"


def _check_message(message: dict[str, Any] | None, mechanism: Mechanism) -> dict[str, Any]:
    """`message` if Meta can take it for `mechanism` (decide's own check), else CannotSend."""
    problem = message_problem(message, mechanism)
    if problem is not None or message is None:
        raise CannotSend(problem.sentence if problem else "message: required")
    return message


def passthrough(record: DecisionRecord) -> dict[str, Any]:
    """The caller's own Send API fields that windowgate does not set, unchanged."""
    fields = record.graph_fields or {}
    return {k: v for k, v in fields.items() if k not in WINDOWGATE_SETS}


def sender_action_of(record: DecisionRecord) -> str | None:
    action = (record.graph_fields or {}).get("sender_action")
    return action if isinstance(action, str) else None


def ad_account_path(version: str, ad_account_id: str) -> str:
    account = ad_account_id.removeprefix("act_")
    return f"/{version}/act_{account}/messages"


def build_call(record: DecisionRecord, page: PageConfig, version: str) -> GraphCall:
    """The call that delivers `record` (an allowed decision); raises CannotSend when none can."""
    decision = record.decision
    mechanism = decision.mechanism
    messages_path = f"/{version}/{decision.page_id}/messages"
    if mechanism in TOKEN_MECHANISMS and not decision.token:
        raise CannotSend(f"a {mechanism} decision without its token")
    if mechanism == "MARKETING":
        if not page.ad_account_id:
            raise CannotSend(f"page {page.page_id} has no ad_account_id in the pages file")
        message = _check_message(record.message, mechanism)
        campaign_body = {
            **{k: v for k, v in message.items() if k != "message_id"},
            "message_id": message["message_id"],
            "messenger_delivery_data": {"subscription_token": decision.token},
        }
        path = ad_account_path(version, page.ad_account_id)
        return GraphCall(path, campaign_body, "text", decision.page_id)
    if mechanism is None:
        raise CannotSend("no Graph call for a decision without a mechanism")
    extra = passthrough(record)
    body: dict[str, Any]
    if sender_action_of(record) is not None:
        if record.message:
            raise CannotSend("a sender_action goes without a message")
        if mechanism not in WINDOW_MECHANISMS:
            raise CannotSend(f"a sender_action needs the window, not {mechanism}")
        body = {**extra, "recipient": _user(decision)}
        return GraphCall(messages_path, body, "text", decision.page_id)
    message = _check_message(record.message, mechanism)
    if mechanism == "OTN":
        body = {"recipient": {"one_time_notif_token": decision.token}, "message": message}
    elif mechanism == "RECURRING":
        body = {"recipient": {"notification_messages_token": decision.token}, "message": message}
    elif mechanism == "PRIVATE_REPLY":
        field = "post_id" if decision.recipient == "post_id" else "comment_id"
        body = {"recipient": {field: decision.token}, "message": message}
    elif mechanism in ("RESPONSE", "UPDATE", "UTILITY"):
        body = {"recipient": _user(decision), "messaging_type": mechanism}
        body["message"] = message
    elif mechanism in ("HUMAN_AGENT", "MESSAGE_TAG"):
        tag = "HUMAN_AGENT" if mechanism == "HUMAN_AGENT" else decision.tag
        if not tag:
            raise CannotSend("a MESSAGE_TAG decision without its tag")
        body = {
            "recipient": _user(decision),
            "messaging_type": "MESSAGE_TAG",
            "tag": tag,
            "message": message,
        }
    else:
        raise CannotSend(f"no Graph call for mechanism {mechanism!r}")
    return GraphCall(messages_path, {**extra, **body}, rate_class(message), decision.page_id)


def _user(decision: Decision) -> dict[str, Any]:
    """The recipient of a call addressed to the user: by id, or by a plugin's user_ref."""
    if decision.recipient == "user_ref":
        return {"user_ref": decision.user_id}
    return {"id": decision.user_id}
