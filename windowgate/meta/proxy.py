"""The drop-in Graph proxy's translations (DESIGN.md §4.3), pure: Meta's Send API body in, a
SendRequest out; a refusal out as a Meta-shaped error a Messenger library understands.

Meta's body → SendRequest:

    recipient.id                        → user_id; messaging_type RESPONSE / UPDATE / UTILITY →
                                          purpose response / update / utility; MESSAGE_TAG with
                                          tag HUMAN_AGENT → human_agent, any other tag → tag;
                                          no messaging_type → auto
    recipient.one_time_notif_token      → purpose otn, user and topic from the token's opt-in
    recipient.notification_messages_token → purpose recurring, user and topic likewise
    recipient.comment_id / post_id      → private_reply_to (R-WIN-5), the user from the comment's
                                          feed webhook
    recipient.user_ref                  → user_id = the user_ref, by_user_ref (its plugin opt-in
                                          was keyed by it); messaging_type as for recipient.id
    message                             → message
    (header X-Windowgate-Human-Author)  → human_author (HUMAN_AGENT needs a named human)
    (header Idempotency-Key or X-Windowgate-Request-Id) → request_id (else a fresh one per call)

Those headers are windowgate's extensions; any other `X-Windowgate-*` header is refused (a
misspelt one would silently drop the human author or the idempotency key).

A refusal becomes `{"error": {message, type, code, error_subcode, fbtrace_id}, "windowgate":
{"reason", "detail", "request_id", "alternatives"}}` with the code Meta itself would have answered
(`REFUSAL_CODES`): 10/2018278 for a closed window, and so on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.codec import did_you_mean, to_wire
from schemas.decision import Decision
from schemas.types import Purpose


class ProxyError(ValueError):
    """The proxied call cannot be taken as a message; carries the Meta-shaped answer."""

    def __init__(
        self, code: int, detail: str, reason: str = "invalid_request", status: int = 400
    ) -> None:
        self.code = code
        self.detail = detail
        self.reason = reason
        self.status = status
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who the proxied call is for: a user id, or a token whose owner the index knows."""

    user_id: str | None = None
    otn_token: str | None = None
    recurring_token: str | None = None
    reply_to: str | None = None  # a comment_id or post_id: a private reply (R-WIN-5)
    user_ref: bool = False  # user_id is a checkbox plugin's user_ref (R-WIN-2)


@dataclass(frozen=True, slots=True)
class ProxyAsk:
    recipient: Recipient
    purpose: Purpose
    message: dict[str, Any]
    tag: str | None = None


EXTENSION_PREFIX = "x-windowgate-"
EXTENSION_HEADERS = ("X-Windowgate-Human-Author", "X-Windowgate-Request-Id")
"""windowgate's extensions to Meta's Send API call, as headers (Meta's body stays Meta's)."""


def check_extension_headers(names: Iterable[str]) -> None:
    """ProxyError (400) naming the first `X-Windowgate-*` header that is not an extension."""
    known = {h.lower() for h in EXTENSION_HEADERS}
    for name in names:
        lowered = name.lower()
        if lowered.startswith(EXTENSION_PREFIX) and lowered not in known:
            hint = did_you_mean(name, EXTENSION_HEADERS, case_sensitive=False)
            raise ProxyError(
                100,
                f"(#100) unknown windowgate header {name}{hint}; "
                f"windowgate reads {', '.join(EXTENSION_HEADERS)}",
            )


_PURPOSE_BY_TYPE: dict[str, Purpose] = {
    "RESPONSE": "response",
    "UPDATE": "update",
    "UTILITY": "utility",
}


def parse_body(body: Any) -> ProxyAsk:
    """Meta's Send API body as a windowgate ask; ProxyError (Meta's 100) when it is not one."""
    if not isinstance(body, dict):
        raise ProxyError(100, "the request body must be a JSON object")
    if "sender_action" in body and "message" not in body:
        raise ProxyError(100, "windowgate forwards messages only, not sender actions")
    recipient = body.get("recipient")
    if not isinstance(recipient, dict):
        raise ProxyError(100, "(#100) param recipient must be an object")
    message = body.get("message")
    if not isinstance(message, dict) or not message:
        raise ProxyError(100, "(#100) param message must be a non-empty object")
    otn = recipient.get("one_time_notif_token")
    recurring = recipient.get("notification_messages_token")
    user = recipient.get("id")
    if isinstance(otn, str) and otn:
        return ProxyAsk(Recipient(otn_token=otn), "otn", message)
    if isinstance(recurring, str) and recurring:
        return ProxyAsk(Recipient(recurring_token=recurring), "recurring", message)
    reply_to = _private_reply_target(recipient)
    if reply_to is not None:
        return ProxyAsk(Recipient(reply_to=reply_to), "auto", message)
    user_ref = recipient.get("user_ref")
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if isinstance(user_ref, str) and user_ref and not user:
        who = Recipient(user_id=user_ref, user_ref=True)
    elif isinstance(user, str) and user:
        who = Recipient(user_id=user)
    else:
        raise ProxyError(
            100,
            "(#100) recipient needs id, user_ref, comment_id, post_id, one_time_notif_token or "
            "notification_messages_token",
        )
    messaging_type = body.get("messaging_type")
    tag = body.get("tag")
    if messaging_type is None:
        return ProxyAsk(who, "auto", message)
    if messaging_type == "MESSAGE_TAG":
        if not isinstance(tag, str) or not tag:
            raise ProxyError(100, "(#100) messaging_type MESSAGE_TAG needs a tag")
        purpose: Purpose = "human_agent" if tag == "HUMAN_AGENT" else "tag"
        return ProxyAsk(who, purpose, message, tag)
    found = _PURPOSE_BY_TYPE.get(messaging_type) if isinstance(messaging_type, str) else None
    if found is None:
        raise ProxyError(100, f"(#100) unknown messaging_type {messaging_type!r}")
    return ProxyAsk(who, found, message)


def _private_reply_target(recipient: dict[str, Any]) -> str | None:
    """The comment_id or post_id a private reply names (R-WIN-5); Meta's ids may be numbers."""
    for field in ("comment_id", "post_id"):
        value = recipient.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value:
            return value
    return None


# reason → (Meta code, subcode) that Meta answers for the same refusal (platform-rules.md §7)
REFUSAL_CODES: dict[str, tuple[int, int | None]] = {
    "window_closed": (10, 2018278),
    "human_agent_window_closed": (10, 2018278),
    "deadline_passed": (10, None),
    "opted_out": (10, 1893015),
    "user_unavailable": (551, 1545041),
    "page_restricted": (10, 1893063),
    "thread_owned_by_other_app": (10, 2018300),
    "cooldown": (4, 2018354),
    "tag_retired": (100, None),
    "invalid_request": (100, None),
    "no_token_for_topic": (100, None),
    "token_expired": (100, None),
    "token_spent": (100, None),
    "token_not_found": (100, None),
    "token_topic_mismatch": (100, None),
    "no_comment": (100, None),
    "private_reply_used": (10, None),
    "private_reply_expired": (10, None),
}
DEFAULT_REFUSAL: tuple[int, int | None] = (10, None)
"""Permission-type refusals (not permitted, mechanism ended or disabled, region): Meta's code 10."""

INSTAGRAM_WINDOW = (10, 2534022)


def meta_error(
    code: int,
    subcode: int | None,
    message: str,
    trace: str,
    windowgate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = trace
    body: dict[str, Any] = {"error": error}
    if windowgate is not None:
        body["windowgate"] = windowgate
    return body


def refusal(decision: Decision) -> dict[str, Any]:
    """The Meta-shaped error for a refused decision, plus windowgate's reason and alternatives."""
    code, subcode = REFUSAL_CODES.get(decision.reason, DEFAULT_REFUSAL)
    if decision.reason == "window_closed" and decision.platform == "instagram":
        code, subcode = INSTAGRAM_WINDOW
    return meta_error(
        code,
        subcode,
        f"(#{code}) windowgate: {decision.detail}",
        f"windowgate-{decision.request_id}",
        {
            "reason": decision.reason,
            "detail": decision.detail,
            "request_id": decision.request_id,
            "rules_version": decision.rules_version,
            "alternatives": [to_wire(a) for a in decision.alternatives],
        },
    )


def proxy_error(error: ProxyError, trace: str) -> dict[str, Any]:
    return meta_error(
        error.code,
        None,
        error.detail,
        trace,
        {"reason": error.reason, "detail": error.detail},
    )


class DeliveryResult(Protocol):
    """What the proxy needs of a delivery's outcome (the dispatch log's `Done` record)."""

    @property
    def request_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def error_code(self) -> int | None: ...
    @property
    def error_subcode(self) -> int | None: ...
    @property
    def graph_status(self) -> int | None: ...
    @property
    def graph_body(self) -> Any: ...


def forwarded(done: DeliveryResult) -> tuple[int, dict[str, Any]]:
    """Meta's own answer to the forwarded call, as recorded in the dispatch log."""
    if done.graph_body is not None and done.graph_status is not None:
        return done.graph_status, done.graph_body
    if done.status == "sent":
        return 200, {"recipient_id": done.user_id, "message_id": done.message_id}
    status = 500 if done.status == "unknown" else 400
    code = 2 if done.status == "unknown" else (done.error_code or 100)
    body = meta_error(
        code,
        done.error_subcode,
        f"(#{code}) windowgate: {done.detail or done.status}",
        f"windowgate-{done.request_id}",
        {"reason": f"delivery_{done.status}", "detail": done.detail},
    )
    if done.status == "unknown":
        body["error"]["is_transient"] = False  # never retry: the message may have been sent
    return status, body
