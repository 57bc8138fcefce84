"""The dispatch log: `<prefix>dispatch-log`, the dispatcher's write-ahead record of Graph calls.

Three record kinds, all JSON, written with transactional producers (see README, "Exactly-once
delivery"): an `attempt` — committed, together with the consumer offset of its decision, BEFORE the
Graph call — and a `done` — committed with the outcome events AFTER it. An attempt without a done
is a call whose outcome nobody recorded (a crash in between): it ends `unknown`, never resent.
An attempt that carries a token (OTN, recurring, marketing) is committed with a `token` record
naming its request as the token's holder: no other request may put that token into a Graph call
(I4), whatever the decisions topic says. Only an outcome that gives the token back (Meta
definitely rejected the request before delivery, or no call was made) writes a second `token`
record, `released`, for the same key.

Partition p of the log belongs with partition p of `decisions` (same partition count): the
dispatcher that owns decisions partition p owns log partition p. Records carry the request's own
key, `[page_id, user_id, request_id]`, so the topic can be compacted (`compact,delete`): a request
keeps its last record (its done) until the retention — the horizon of duplicate detection. A
token's records are keyed by the token, `[page_id, user_id, mechanism, token]` (tokens belong to a
page and user, so they live in the user's partition), and compaction keeps its last word too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import WIRE_VERSION, SchemaError, decode_as, loads, to_compact_wire
from schemas.events import OutcomeStatus
from schemas.types import Mechanism, Platform
from services.common.topics import TopicSpec, ensure_topic_specs


def request_key(page_id: str, user_id: str, request_id: str) -> bytes:
    """The log key of one request: unambiguous whatever the ids contain."""
    return orjson.dumps([page_id, user_id, request_id])


def token_key(page_id: str, user_id: str, mechanism: Mechanism | None, token: str) -> bytes:
    """The log key of one token: four items, so it never equals a request's key (three)."""
    return orjson.dumps([page_id, user_id, mechanism, token])


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """Written before the call: everything needed to close the request if nobody else does."""

    request_id: str
    page_id: str
    user_id: str
    at: int
    platform: Platform = "messenger"
    mechanism: Mechanism | None = None
    token: str | None = None

    @property
    def key(self) -> bytes:
        return request_key(self.page_id, self.user_id, self.request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """Written after the call (or instead of it): the delivery outcome and Meta's own answer."""

    request_id: str
    page_id: str
    user_id: str
    at: int
    status: OutcomeStatus
    platform: Platform = "messenger"
    mechanism: Mechanism | None = None
    message_id: str | None = None
    error_code: int | None = None
    error_subcode: int | None = None
    detail: str | None = None
    graph_status: int | None = None
    graph_body: dict[str, Any] | None = None
    calls: int = 0

    @property
    def key(self) -> bytes:
        return request_key(self.page_id, self.user_id, self.request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenUse:
    """Who holds a token: `request_id`, since its attempt (`released=False`, written with the
    attempt), until an outcome of that request gives the token back (`released=True`)."""

    page_id: str
    user_id: str
    mechanism: Mechanism | None
    token: str
    request_id: str
    at: int
    released: bool = False

    @property
    def key(self) -> bytes:
        return token_key(self.page_id, self.user_id, self.mechanism, self.token)


def token_use(attempt: Attempt, at: int, *, released: bool = False) -> TokenUse | None:
    """The token record of `attempt` (None when it carries no token)."""
    if attempt.token is None:
        return None
    return TokenUse(
        page_id=attempt.page_id,
        user_id=attempt.user_id,
        mechanism=attempt.mechanism,
        token=attempt.token,
        request_id=attempt.request_id,
        at=at,
        released=released,
    )


LogRecord = Attempt | Done | TokenUse

_KINDS: dict[type[Any], str] = {Attempt: "attempt", Done: "done", TokenUse: "token"}
_TYPES: dict[str, type[Any]] = {kind: cls for cls, kind in _KINDS.items()}
_DEFAULTS: dict[type[Any], tuple[tuple[str, Any], ...]] = {
    cls: tuple((f.name, f.default) for f in dataclasses.fields(cls)) for cls in _KINDS
}


def encode_record(record: LogRecord) -> bytes:
    """Compact JSON (fields at their defaults left out), on the hot path: two or three a request."""
    wire: dict[str, Any] = {"v": WIRE_VERSION, "kind": _KINDS[type(record)]}
    for name, default in _DEFAULTS[type(record)]:
        value = getattr(record, name)
        if value != default:
            wire[name] = value
    return orjson.dumps(wire)


def decode_record(raw: bytes | str) -> LogRecord:
    data = loads(raw, "dispatch log record")
    kind = data.get("kind") if isinstance(data, dict) else None
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError("kind", f"expected 'attempt', 'done' or 'token', got {kind!r}")
    record: LogRecord = decode_as(cls, data)
    return record


def done_to_wire(done: Done) -> dict[str, Any]:
    """The outcome as the HTTP API shows it (`delivery` beside the decision)."""
    wire = to_compact_wire(done)
    wire.pop("graph_body", None)
    return {"status": done.status, **wire}


@dataclass
class LogScan:
    """What one partition of the log says: every request seen, attempts still open, and the
    tokens some request holds (by token key)."""

    seen: dict[bytes, int] = field(default_factory=dict)
    open: dict[bytes, Attempt] = field(default_factory=dict)
    tokens: dict[bytes, TokenUse] = field(default_factory=dict)
    records: int = 0
    unreadable: int = 0

    def add(self, key: bytes | None, raw: bytes | None, timestamp_ms: int) -> None:
        self.records += 1
        if raw is None:
            return
        try:
            record = decode_record(raw)
        except SchemaError:
            self.unreadable += 1
            return
        if isinstance(record, TokenUse):
            apply_token(self.tokens, record)
            return
        k = record.key
        self.seen[k] = max(self.seen.get(k, 0), timestamp_ms)
        if isinstance(record, Attempt):
            self.open.setdefault(k, record)
        else:
            self.open.pop(k, None)


async def scan_partition(
    bootstrap: str, topic: str, partition: int, timeout_s: float = 60.0
) -> LogScan:
    """Read one log partition from its start to its last committed record (read_committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    scan = LogScan()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + timeout_s
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=10_000)
            for record in batch.get(tp, ()):
                scan.add(record.key, record.value, record.timestamp)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}[{partition}]: read {scan.records} records in {timeout_s:.0f} s "
                    f"without reaching offset {end}"
                )
    finally:
        await consumer.stop()
    return scan


async def ensure_log_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    retention_ms: int,
    replication: int | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the log (compacted, time-bounded) if missing; refuse another partition count.

    Replication and `min.insync.replicas` are those of every topic (WINDOWGATE_REPLICATION_FACTOR,
    `services.common.topics`).
    """
    spec = TopicSpec(
        topic,
        configs={
            "cleanup.policy": "compact,delete",
            "retention.ms": str(retention_ms),
            "min.compaction.lag.ms": str(min(retention_ms, 3_600_000)),
        },
        why_keyed="the log must be co-partitioned with decisions",
    )
    await ensure_topic_specs(bootstrap, [spec], partitions, replication, timeout_s)


def apply_token(tokens: dict[bytes, TokenUse], record: TokenUse) -> None:
    """Apply one token record to the holders: a hold takes the token; a release frees it only
    when it comes from the request holding it (another request never frees someone's token)."""
    key = record.key
    if not record.released:
        tokens[key] = record
        return
    holder = tokens.get(key)
    if holder is not None and holder.request_id == record.request_id:
        del tokens[key]


_Entry = TypeVar("_Entry", int, TokenUse)


def prune(entries: dict[bytes, _Entry], older_than_ms: int) -> int:
    """Forget requests (or token holds) recorded before `older_than_ms`, the log's retention:
    the log itself has let go of them by then. Return how many."""
    stale = [k for k, v in entries.items() if (v if isinstance(v, int) else v.at) < older_than_ms]
    for k in stale:
        del entries[k]
    return len(stale)
