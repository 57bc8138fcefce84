"""The Graph `message` object of a SendRequest: is it a body Meta accepts, and does it ask for
permission (an opt-in request)?

One check, used twice: `decide` refuses a bad body (`invalid_request`, naming the field) before
any token is reserved, and `windowgate.meta.send_api` runs the same check before it builds the
Graph call, so an allowed decision is a sendable one (issue 10, point 6). Pure: a dict in, a
value out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from schemas.types import OPTIN_TEMPLATES, Mechanism, OptinTemplate

TEXT_LIMIT: Final = 2000
"""Meta refuses text of 2,000 characters or more (M-SENDAPI)."""

TITLE_LIMIT: Final = 65
"""The title of an opt-in request template: at most 65 characters (platform-rules §3)."""

ATTACHMENT_TYPES: Final = ("image", "audio", "video", "file", "template")
MAX_QUICK_REPLIES: Final = 13
MAX_METADATA: Final = 1000
"""Meta's limits on a message's quick replies and its metadata string (M-SENDAPI)."""

CONTENT_KEYS: Final = ("text", "attachment", "attachments", "template")
"""What carries a message's content: text, Graph attachment(s), or windowgate's utility template
(`template.name`). Quick replies and metadata ride along with one of these."""


@dataclass(frozen=True, slots=True)
class MessageProblem:
    """Why a body cannot be sent: `field` is the dotted path of the bad field."""

    field: str
    problem: str

    @property
    def sentence(self) -> str:
        return f"{self.field}: {self.problem}"


@dataclass(frozen=True, slots=True)
class OptinRequest:
    """A message that asks the user for permission: its template, title and payload (the OTN
    topic; for recurring messages the title is what R-RN-3 counts by)."""

    template: OptinTemplate
    title: str
    payload: str | None

    @property
    def key(self) -> str:
        """What a decision names as its topic: the OTN topic, or the recurring title."""
        if self.template == "one_time_notif_req" and self.payload:
            return self.payload
        return self.title


def _template_payload(message: dict[str, Any]) -> dict[str, Any] | None:
    attachment = message.get("attachment")
    if not isinstance(attachment, dict) or attachment.get("type") != "template":
        return None
    payload = attachment.get("payload")
    return payload if isinstance(payload, dict) else None


def optin_request(message: dict[str, Any] | None) -> OptinRequest | None:
    """The opt-in request `message` makes, or None (only meaningful once `message_problem` has
    passed it: then the title is there)."""
    if type(message) is not dict or "attachment" not in message:
        return None  # the common case, cheaply: decide asks this of every request
    payload = _template_payload(message)
    if payload is None:
        return None
    kind = payload.get("template_type")
    for template in OPTIN_TEMPLATES:
        if kind == template:
            title, topic = payload.get("title"), payload.get("payload")
            return OptinRequest(
                template,
                title if isinstance(title, str) else "",
                topic if isinstance(topic, str) and topic else None,
            )
    return None


def _non_empty(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _attachment_problem(attachment: Any, where: str) -> MessageProblem | None:
    if not isinstance(attachment, dict):
        return MessageProblem(where, "expected an object")
    if attachment.get("type") not in ATTACHMENT_TYPES:
        return MessageProblem(f"{where}.type", f"expected one of {', '.join(ATTACHMENT_TYPES)}")
    if attachment["type"] != "template":
        return None
    payload = attachment.get("payload")
    if not isinstance(payload, dict):
        return MessageProblem(f"{where}.payload", "a template attachment needs a payload object")
    kind = payload.get("template_type")
    if not _non_empty(kind):
        return MessageProblem(f"{where}.payload.template_type", "required")
    if kind not in OPTIN_TEMPLATES:
        return None
    title = payload.get("title")
    if not _non_empty(title):
        return MessageProblem(f"{where}.payload.title", f"required by a {kind} template")
    if len(title) > TITLE_LIMIT:
        return MessageProblem(
            f"{where}.payload.title",
            f"has {len(title)} characters; Meta allows at most {TITLE_LIMIT}",
        )
    if kind == "one_time_notif_req" and not _non_empty(payload.get("payload")):
        return MessageProblem(
            f"{where}.payload.payload", "required: the topic the user is asked to opt in to"
        )
    return None


def message_problem(
    message: dict[str, Any] | None, mechanism: Mechanism | None = None
) -> MessageProblem | None:
    """What makes `message` unsendable by `mechanism` (None: any but MARKETING), or None.

    A MARKETING send posts a campaign (`message_id`) to the Marketing Messages API; every other
    mechanism posts the body to /messages, which needs exactly one of text and attachment."""
    if type(message) is dict and len(message) == 1 and mechanism != "MARKETING":
        text = message.get("text")  # the hot path, a plain text, decided in a few lookups
        if type(text) is str and 0 < len(text) < TEXT_LIMIT:
            return None
    if message is None:
        return MessageProblem("message", "required: the Graph message object to send")
    if not isinstance(message, dict) or not message:
        return MessageProblem("message", "expected a non-empty object")
    if mechanism == "MARKETING":
        if not _non_empty(message.get("message_id")):
            return MessageProblem(
                "message.message_id", "a MARKETING send needs the campaign message's id"
            )
        return None
    if not any(key in message for key in CONTENT_KEYS):
        return MessageProblem("message", f"needs one of {', '.join(CONTENT_KEYS)}")
    found = _extras_problem(message)
    if found is not None:
        return found
    if "text" in message:
        text = message["text"]
        if not _non_empty(text):
            return MessageProblem("message.text", "expected a non-empty string")
        if len(text) >= TEXT_LIMIT:
            return MessageProblem(
                "message.text", f"has {len(text)} characters; Meta allows fewer than {TEXT_LIMIT}"
            )
        if "attachment" in message:
            return MessageProblem("message", "has both text and attachment; Meta takes one")
    if "attachment" in message:
        return _attachment_problem(message["attachment"], "message.attachment")
    attachments = message.get("attachments")
    if "attachments" in message:
        if not isinstance(attachments, list) or not attachments:
            return MessageProblem("message.attachments", "expected a non-empty list")
        for i, attachment in enumerate(attachments):
            found = _attachment_problem(attachment, f"message.attachments[{i}]")
            if found is not None:
                return found
    return None


def _extras_problem(message: dict[str, Any]) -> MessageProblem | None:
    """What rides along with the content: windowgate's template name, quick replies, metadata."""
    if "template" in message:
        template = message["template"]
        if not isinstance(template, dict) or not _non_empty(template.get("name")):
            return MessageProblem("message.template.name", "expected the approved template's name")
    replies = message.get("quick_replies")
    if "quick_replies" in message and (
        not isinstance(replies, list)
        or not 0 < len(replies) <= MAX_QUICK_REPLIES
        or not all(isinstance(r, dict) and r.get("content_type") for r in replies)
    ):
        return MessageProblem(
            "message.quick_replies",
            f"expected 1 to {MAX_QUICK_REPLIES} objects, each with a content_type",
        )
    metadata = message.get("metadata")
    if "metadata" in message and (not isinstance(metadata, str) or len(metadata) > MAX_METADATA):
        return MessageProblem("message.metadata", f"expected a string of at most {MAX_METADATA}")
    return None
