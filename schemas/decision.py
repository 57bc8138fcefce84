"""Decision v1 (DESIGN.md §4.5): the answer to one SendRequest, with its reason."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from schemas.codec import WIRE_VERSION, SchemaError, decode_as, dumps, loads, to_wire
from schemas.types import Mechanism, OptinTemplate, Platform, Reason, RecipientKind


@dataclass(frozen=True, slots=True)
class Alternative:
    """A mechanism that could carry the message now when the asked one cannot."""

    mechanism: Mechanism
    detail: str
    topic: str | None = None
    tag: str | None = None
    valid_until: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    request_id: str
    page_id: str
    user_id: str
    decided_at: int
    allowed: bool
    reason: Reason
    detail: str
    rules_version: str
    mechanism: Mechanism | None = None
    tag: str | None = None
    valid_until: int | None = None
    alternatives: tuple[Alternative, ...] = ()
    duplicate: bool = False
    platform: Platform = "messenger"
    # windowgate extensions: the rule that allowed it, and the token it reserves (OTN/RN/MM).
    rule: str | None = None
    token: str | None = None
    topic: str | None = None
    # An opt-in request (DESIGN.md §4.6): the template it asks with; `topic` is then its title
    # (notification_messages, counted per title by R-RN-3) or its payload (one_time_notif_req).
    optin_request: OptinTemplate | None = None
    # How the Graph call addresses the user when not by id (a PRIVATE_REPLY's token is the
    # comment / post id; a user_ref is the decision's user_id). None: recipient.id or the token.
    recipient: RecipientKind | None = None

    def as_duplicate(self) -> Decision:
        return replace(self, duplicate=True)


def decision_to_wire(decision: Decision) -> dict[str, Any]:
    wire: dict[str, Any] = {"v": WIRE_VERSION}
    wire.update(to_wire(decision))
    return wire


def encode_decision(decision: Decision) -> bytes:
    return dumps(decision_to_wire(decision))


def decode_decision(raw: bytes | str) -> Decision:
    return decode_as(Decision, loads(raw, "decision"))


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """What the `decisions` topic carries: the Decision v1 fields plus the request's `message`.

    The dispatcher needs the message body to send, and must not keep a second copy of user state
    or call back for it; the user's stored state keeps decisions without their messages.
    """

    decision: Decision
    message: dict[str, Any] | None = None
    graph_fields: dict[str, Any] | None = None
    """The request's `graph_fields`: what the Graph call carries unchanged (SendRequest)."""


def encode_decision_record(record: DecisionRecord) -> bytes:
    wire = decision_to_wire(record.decision)
    if record.message is not None:
        wire["message"] = record.message
    if record.graph_fields:
        wire["graph_fields"] = record.graph_fields
    return dumps(wire)


def decode_decision_record(raw: bytes | str) -> DecisionRecord:
    data = loads(raw, "decision record")
    decision = decode_as(Decision, data)
    message = data.get("message") if isinstance(data, dict) else None
    if message is not None and not isinstance(message, dict):
        raise SchemaError("message", "expected an object")
    fields = data.get("graph_fields") if isinstance(data, dict) else None
    if fields is not None and not isinstance(fields, dict):
        raise SchemaError("graph_fields", "expected an object")
    return DecisionRecord(decision, message, fields)
