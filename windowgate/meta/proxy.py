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
    sender_action (no message)          → purpose response: a typing indicator, read receipt or
                                          reaction needs the window, is no message, spends nothing
    every other field                   → graph_fields: sent to Graph unchanged (send_api)
    (header X-Windowgate-Human-Author)  → human_author (HUMAN_AGENT needs a named human)
    (header Idempotency-Key or X-Windowgate-Request-Id) → request_id (else a fresh one per call)

Form-encoded bodies and query-string parameters are Meta's own shapes too (`graph_params`): an
object parameter (`recipient`, `message`, a reaction's `payload`) is JSON, or the single-quoted
literal of Meta's curl samples (`recipient={'id':'<PSID>'}`).

HUMAN_AGENT (`human_sender`): a proxy send tagged HUMAN_AGENT proves its human as the page chose
(`human_agent_proof` in the pages file: the header, a persona_id in the page's `personas`, or the
page's trust of its own tag). Without a proof it is decided as a RESPONSE: inside the window the
window suffices; outside it the refusal says what proof the page expects.

Those headers are windowgate's extensions; any other `X-Windowgate-*` header is refused (a
misspelt one would silently drop the human author or the idempotency key).

A refusal becomes `{"error": {message, type, code, error_subcode, fbtrace_id}, "windowgate":
{"reason", "detail", "request_id", "alternatives"}}` with the code Meta itself would have answered
(`REFUSAL_CODES`): 10/2018278 for a closed window, and so on.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.codec import did_you_mean, to_wire
from schemas.decision import Decision
from schemas.types import Purpose
from windowgate.core.pages import PageConfig
from windowgate.meta.send_api import SENDER_ACTIONS, WINDOWGATE_SETS


class ProxyError(ValueError):
    """The proxied call cannot be taken as a message; carries the Meta-shaped answer."""

    def __init__(
        self,
        code: int,
        detail: str,
        reason: str = "invalid_request",
        status: int = 400,
        *,
        subcode: int | None = None,
        error_type: str = "OAuthException",
    ) -> None:
        self.code = code
        self.detail = detail
        self.reason = reason
        self.status = status
        self.subcode = subcode
        self.error_type = error_type
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
    message: dict[str, Any] | None
    tag: str | None = None
    graph_fields: dict[str, Any] = field(default_factory=dict)
    """The caller's fields windowgate does not interpret, for the Graph call unchanged."""

    @property
    def sender_action(self) -> str | None:
        action = self.graph_fields.get("sender_action")
        return action if isinstance(action, str) else None


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
    recipient = body.get("recipient")
    if not isinstance(recipient, dict):
        raise ProxyError(100, "(#100) param recipient must be an object")
    fields = {k: v for k, v in body.items() if k not in WINDOWGATE_SETS}
    if "sender_action" in body:
        return _sender_action(body, recipient, fields)
    message = body.get("message")
    if not isinstance(message, dict) or not message:
        raise ProxyError(100, "(#100) param message must be a non-empty object")
    ask = _message_ask(body, recipient, message)
    return ProxyAsk(ask.recipient, ask.purpose, ask.message, ask.tag, fields)


def _sender_action(
    body: dict[str, Any], recipient: dict[str, Any], fields: dict[str, Any]
) -> ProxyAsk:
    """A typing indicator, read receipt or reaction: inside the window only, like Meta."""
    action = body["sender_action"]
    if action not in SENDER_ACTIONS:
        raise ProxyError(
            100, f"(#100) param sender_action must be one of {', '.join(sorted(SENDER_ACTIONS))}"
        )
    if "message" in body:
        raise ProxyError(100, "(#100) send either a message or a sender_action, not both")
    user = recipient.get("id")
    if isinstance(user, int) and not isinstance(user, bool):
        user = str(user)
    if not isinstance(user, str) or not user:
        raise ProxyError(100, "(#100) a sender_action needs recipient.id")
    return ProxyAsk(Recipient(user_id=user), "response", None, None, fields)


def _message_ask(
    body: dict[str, Any], recipient: dict[str, Any], message: dict[str, Any]
) -> ProxyAsk:
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
    for name in ("comment_id", "post_id"):
        value = recipient.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value:
            return value
    return None


OBJECT_PARAMS = frozenset({"recipient", "message", "payload"})
"""Send API parameters whose value is an object: JSON in a form or query string."""


def graph_param(name: str, value: str) -> Any:
    """A form or query-string parameter as Graph reads it: objects from JSON, or from the
    single-quoted literal in Meta's curl samples; anything else stays a string."""
    if name not in OBJECT_PARAMS:
        return value
    parsed: Any
    try:
        parsed = json.loads(value)
    except ValueError:
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = None
    if not isinstance(parsed, dict) or not _json_like(parsed):
        raise ProxyError(100, f"(#100) param {name} must be a JSON object")
    return parsed


def _json_like(value: Any) -> bool:
    """Only what JSON has (a Python literal may hold tuples, sets, bytes, complex numbers)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_like(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def graph_params(*sources: Mapping[str, str]) -> dict[str, Any]:
    """Parameters from the query string, then the form (a later source wins, as in Graph)."""
    params: dict[str, Any] = {}
    for source in sources:
        for name, value in source.items():
            params[name] = graph_param(name, value)
    return params


PROOF_HOW: dict[str, str] = {
    "header": "name the human in the X-Windowgate-Human-Author header",
    "persona": "send as a persona_id listed in the page's personas",
    "trust_tag": "the page trusts its own HUMAN_AGENT tag",
}


def human_sender(ask: ProxyAsk, page: PageConfig, header: str | None) -> str | None:
    """Who wrote a HUMAN_AGENT send, by the page's `human_agent_proof`; None when unproven.

    The header is explicit under every setting; `persona` maps the body's persona_id to its
    human; `trust_tag` takes the page at its word (its own tag is its own statement)."""
    if header:
        return header
    if page.human_agent_proof == "persona":
        persona = ask.graph_fields.get("persona_id")
        return page.personas.get(persona) if isinstance(persona, str) else None
    if page.human_agent_proof == "trust_tag":
        return f"a human of page {page.page_id} (the page's own HUMAN_AGENT tag)"
    return None


def unproven_note(page: PageConfig) -> str:
    """Why a HUMAN_AGENT send without the page's proof was decided as a RESPONSE."""
    return (
        "HUMAN_AGENT without a proof of its human is sent only inside the window; outside it, "
        f"{PROOF_HOW[page.human_agent_proof]} (human_agent_proof {page.human_agent_proof!r})"
    )


# reason → (Meta code, subcode) that Meta answers for the same refusal (platform-rules.md §7)
REFUSAL_CODES: dict[str, tuple[int, int | None]] = {
    "window_closed": (10, 2018278),
    "human_agent_window_closed": (10, 2018278),
    "human_author_missing": (10, 2018278),
    "human_agent_not_permitted": (10, 2018278),
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
    # opt-in requests: outside the window Meta answers as for any send; a token or tag is a bad
    # parameter for a template that asks for one (the weekly limit keeps the default code 10)
    "optin_request_outside_window": (10, 2018278),
    "optin_request_purpose": (100, None),
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
    error_type: str = "OAuthException",
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": error_type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = trace
    body: dict[str, Any] = {"error": error}
    if windowgate is not None:
        body["windowgate"] = windowgate
    return body


def refusal(decision: Decision, note: str | None = None) -> dict[str, Any]:
    """The Meta-shaped error for a refused decision, plus windowgate's reason and alternatives
    (and `note`: what the caller can do, e.g. the HUMAN_AGENT proof its page expects)."""
    code, subcode = REFUSAL_CODES.get(decision.reason, DEFAULT_REFUSAL)
    if decision.reason == "window_closed" and decision.platform == "instagram":
        code, subcode = INSTAGRAM_WINDOW
    detail = f"{decision.detail}; {note}" if note else decision.detail
    return meta_error(
        code,
        subcode,
        f"(#{code}) windowgate: {detail}",
        f"windowgate-{decision.request_id}",
        {
            "reason": decision.reason,
            "detail": detail,
            "request_id": decision.request_id,
            "rules_version": decision.rules_version,
            "alternatives": [to_wire(a) for a in decision.alternatives],
        },
    )


def proxy_error(error: ProxyError, trace: str) -> dict[str, Any]:
    return meta_error(
        error.code,
        error.subcode,
        error.detail,
        trace,
        {"reason": error.reason, "detail": error.detail},
        error.error_type,
    )


def unknown_object(object_id: str) -> ProxyError:
    """Graph's answer for a node the token cannot load: an unknown page id, or another page's
    (code 100, subcode 33, GraphMethodException; never 190, which would revoke a good token)."""
    return ProxyError(
        100,
        f"Unsupported post request. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation",
        "unknown_page",
        subcode=33,
        error_type="GraphMethodException",
    )


def too_large(size: int | None, limit: int, what: str) -> ProxyError:
    """A body over the proxy's limit, as a Graph-shaped 413 (an SDK always calls .json())."""
    told = f"{size} bytes" if size is not None else "more"
    return ProxyError(
        100,
        f"(#100) the request body has {told}; windowgate takes at most {limit} bytes for {what}",
        "too_large",
        413,
    )


MAYBE_DELIVERED_STATUS = 400
"""Not 5xx: an SDK's retry policy resends on 5xx, and this send may already have happened."""


def maybe_delivered(request_id: str, detail: str, trace: str) -> dict[str, Any]:
    """The answer when the outcome is not known: the message may have been delivered, so it
    must not be retried blindly; the same Idempotency-Key asks again without a second send."""
    message = (
        f"(#2) windowgate: {detail}. The message may have been delivered: do not retry it "
        f"blindly; repeat the call with Idempotency-Key: {request_id} to learn its outcome "
        "without sending it twice"
    )
    body = meta_error(
        2, None, message, trace, {"reason": "outcome_unknown", "request_id": request_id}
    )
    body["error"]["is_transient"] = False
    body["windowgate"]["detail"] = detail
    return body


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
    """Meta's own answer to the forwarded call, as recorded in the dispatch log; an ambiguous
    outcome (timeout, 5xx) as `maybe_delivered`, with Meta's answer beside it if there was one."""
    trace = f"windowgate-{done.request_id}"
    if done.status == "unknown":
        body = maybe_delivered(
            done.request_id, f"the Graph call's outcome is unknown ({done.detail})", trace
        )
        body["windowgate"]["reason"] = "delivery_unknown"
        if done.graph_body is not None:
            body["windowgate"]["graph_status"] = done.graph_status
            body["windowgate"]["graph_answer"] = done.graph_body
        return MAYBE_DELIVERED_STATUS, body
    if done.graph_body is not None and done.graph_status is not None:
        return done.graph_status, done.graph_body
    if done.status == "sent":
        return 200, {"recipient_id": done.user_id, "message_id": done.message_id}
    code = done.error_code or 100
    body = meta_error(
        code,
        done.error_subcode,
        f"(#{code}) windowgate: {done.detail or done.status}",
        trace,
        {"reason": f"delivery_{done.status}", "detail": done.detail},
    )
    return 400, body
