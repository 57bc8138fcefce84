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

The message body is the request's own `message` (carried on the decisions topic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from schemas.decision import Decision, DecisionRecord
from windowgate.core.pages import PageConfig

RateClass = Literal["text", "media"]

MEDIA_TYPES = frozenset({"audio", "video"})
"""Attachment types Meta limits to 10 calls/s per page (M-RATE); everything else is 300/s."""

TEXT_LIMIT = 2000
"""Meta refuses text of 2,000 characters or more (M-SENDAPI)."""


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


def _check_message(message: dict[str, Any] | None) -> dict[str, Any]:
    if not message:
        raise CannotSend("the request carries no message to send")
    text = message.get("text")
    if isinstance(text, str) and len(text) >= TEXT_LIMIT:
        raise CannotSend(f"message.text has {len(text)} characters; Meta allows fewer than 2000")
    return message


def ad_account_path(version: str, ad_account_id: str) -> str:
    account = ad_account_id.removeprefix("act_")
    return f"/{version}/act_{account}/messages"


def build_call(record: DecisionRecord, page: PageConfig, version: str) -> GraphCall:
    """The call that delivers `record` (an allowed decision); raises CannotSend when none can."""
    decision = record.decision
    mechanism = decision.mechanism
    messages_path = f"/{version}/{decision.page_id}/messages"
    if mechanism in ("OTN", "RECURRING", "MARKETING", "PRIVATE_REPLY") and not decision.token:
        raise CannotSend(f"a {mechanism} decision without its token")
    if mechanism == "MARKETING":
        if not page.ad_account_id:
            raise CannotSend(f"page {page.page_id} has no ad_account_id in the pages file")
        message = record.message or {}
        campaign = message.get("message_id")
        if not isinstance(campaign, str) or not campaign:
            raise CannotSend("a MARKETING send needs message.message_id (the campaign message)")
        campaign_body = {
            **{k: v for k, v in message.items() if k != "message_id"},
            "message_id": campaign,
            "messenger_delivery_data": {"subscription_token": decision.token},
        }
        path = ad_account_path(version, page.ad_account_id)
        return GraphCall(path, campaign_body, "text", decision.page_id)
    message = _check_message(record.message)
    body: dict[str, Any]
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
    return GraphCall(messages_path, body, rate_class(message), decision.page_id)


def _user(decision: Decision) -> dict[str, Any]:
    """The recipient of a call addressed to the user: by id, or by a plugin's user_ref."""
    if decision.recipient == "user_ref":
        return {"user_ref": decision.user_id}
    return {"id": decision.user_id}
