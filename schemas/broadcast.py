"""Broadcasts v1 (DESIGN.md §4.6): one message to a page's audience, each recipient decided by the
single writer that owns the user, at most one message per (broadcast, user), ever.

Wire records:
- `BroadcastSpec` is what `POST /v1/broadcasts` accepts (strict: an unknown key is a 400 naming it).
- `BroadcastCommand` goes to every partition of `<prefix>broadcast-commands` (co-partitioned with
  the keyed topics; key `<broadcast_id>`, the partition set explicitly), so each window partition
  fans out to the users it owns: `create` carries the spec; `pause`, `resume`, `cancel` do not.
- `BroadcastProgress` is what each window partition publishes, in the same transaction as the
  decisions it counts, to the compacted `<prefix>broadcasts` (key `<broadcast_id>:<partition>`);
  the status of a broadcast is the sum over its partitions (`BroadcastStatus`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from schemas.codec import WIRE_VERSION, SchemaError, decode_as, dumps, loads, to_wire
from schemas.types import Platform, Purpose

BroadcastState = Literal["scheduled", "running", "paused", "done", "cancelled"]
CommandKind = Literal["create", "pause", "resume", "cancel"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Audience:
    """Who is in: every condition given must hold (`users`, if given, lists them explicitly).
    `topic`: users holding a usable OTN / recurring token on that topic."""

    WIRE_STRICT: ClassVar[bool] = True

    topic: str | None = None
    labels_all: tuple[str, ...] = ()
    labels_any: tuple[str, ...] = ()
    labels_none: tuple[str, ...] = ()
    users: tuple[str, ...] | None = None

    def matches_labels(self, labels: tuple[str, ...] | frozenset[str]) -> bool:
        have = set(labels)
        return (
            all(label in have for label in self.labels_all)
            and (not self.labels_any or any(label in have for label in self.labels_any))
            and not any(label in have for label in self.labels_none)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastSpec:
    WIRE_STRICT: ClassVar[bool] = True

    broadcast_id: str
    page_id: str
    message: dict[str, Any]
    platform: Platform = "messenger"
    purpose: Purpose = "auto"
    audience: Audience = field(default_factory=Audience)
    not_before: int | None = None  # epoch ms (the API takes ISO 8601)
    created_at: int | None = None

    def __post_init__(self) -> None:
        for name in ("broadcast_id", "page_id"):
            if not getattr(self, name):
                raise SchemaError(name, "must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastCommand:
    kind: CommandKind
    broadcast_id: str
    page_id: str
    at: int
    spec: BroadcastSpec | None = None  # with `create` only


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastProgress:
    """One partition's share of a broadcast. Counts only grow; `status` is the partition's."""

    broadcast_id: str
    page_id: str
    partition: int
    status: BroadcastState
    audience: int = 0  # recipients of this partition decided so far or still to decide
    decided: int = 0
    by_mechanism: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    delivered: int = 0
    read: int = 0
    created_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    updated_at: int | None = None


def recipient_request_id(broadcast_id: str, user_id: str) -> str:
    """The request_id of one recipient's decision: the same for every attempt, so a crash, a
    rebalance or a resubmitted broadcast can never decide (or send to) a user twice; `GET
    /v1/decisions/{id}` answers for it."""
    return f"bc:{broadcast_id}:{user_id}"


def _encode(record: Any) -> bytes:
    wire: dict[str, Any] = {"v": WIRE_VERSION}
    wire.update(to_wire(record))
    return dumps(wire)


def encode_command(command: BroadcastCommand) -> bytes:
    return _encode(command)


def decode_command(raw: bytes | str) -> BroadcastCommand:
    return decode_as(BroadcastCommand, loads(raw, "broadcast command"))


def encode_progress(progress: BroadcastProgress) -> bytes:
    return _encode(progress)


def decode_progress(raw: bytes | str) -> BroadcastProgress:
    return decode_as(BroadcastProgress, loads(raw, "broadcast progress"))


def spec_from_wire(data: Any, path: str = "") -> BroadcastSpec:
    return decode_as(BroadcastSpec, data, path)
