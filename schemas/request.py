"""SendRequest v1 (DESIGN.md §4.4): what another service asks windowgate to send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from schemas.codec import WIRE_VERSION, SchemaError, decode_as, dumps, loads, to_wire
from schemas.events import event_key
from schemas.types import Platform, Purpose


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    """Strict on the wire: an unknown field (`purpse`) is an error naming it, never a default
    silently taken in its place (that would change the decision)."""

    WIRE_STRICT: ClassVar[bool] = True

    request_id: str
    page_id: str
    user_id: str
    platform: Platform = "messenger"
    purpose: Purpose = "auto"
    topic: str | None = None
    tag: str | None = None
    human_author: str | None = None
    message: dict[str, Any] | None = None
    send_by: int | None = None
    created_at: int | None = None
    graph_fields: dict[str, Any] | None = None
    """Send API fields windowgate does not interpret (`notification_type`, `persona_id`,
    `reply_to`, `metadata`, `sender_action`, ...): the proxy carries the caller's own body here
    so that the Graph call sends them unchanged (windowgate.meta.send_api.build_call)."""
    # Appended (issue 14): what the request spends or how it addresses the user.
    token: str | None = None
    """Spend exactly this OTN token (purpose otn or auto), not the oldest of its topic."""
    private_reply_to: str | None = None
    """A comment_id or post_id of this user's: the one private reply to it (R-WIN-5)."""
    by_user_ref: bool = False
    """`user_id` is a checkbox plugin's `user_ref` (its opt-in was keyed by it): the Graph call
    addresses `recipient.user_ref` (R-WIN-2)."""

    def __post_init__(self) -> None:
        for name in ("request_id", "page_id", "user_id"):
            if not getattr(self, name):
                raise SchemaError(name, "must not be empty")

    @property
    def key(self) -> str:
        return event_key(self.page_id, self.user_id)

    @property
    def sender_action(self) -> str | None:
        """A typing indicator, read receipt or reaction (no message): decided, never remembered
        (windowgate.core.transition.decide_request)."""
        action = (self.graph_fields or {}).get("sender_action")
        return action if isinstance(action, str) and self.message is None else None


def request_to_wire(request: SendRequest) -> dict[str, Any]:
    """Unset (None) fields are left out: a field added later (graph_fields, token, ...) never
    reaches an older reader unless it is used, and the strict decoder reads absent as None."""
    wire: dict[str, Any] = {"v": WIRE_VERSION}
    wire.update((k, v) for k, v in to_wire(request).items() if v is not None)
    return wire


def encode_request(request: SendRequest) -> bytes:
    return dumps(request_to_wire(request))


def request_from_wire(data: Any, path: str = "") -> SendRequest:
    if isinstance(data, dict) and data.get("v", WIRE_VERSION) != WIRE_VERSION:
        where = f"{path}.v" if path else "v"
        raise SchemaError(
            where, f"unsupported wire version {data['v']!r} (expected {WIRE_VERSION})"
        )
    return decode_as(SendRequest, data, path)


def decode_request(raw: bytes | str) -> SendRequest:
    return request_from_wire(loads(raw, "send request"))
