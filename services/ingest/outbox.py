"""One normalised body → the Kafka records to publish for it. Pure apart from the `seen` cache.

Events go to `<prefix>events` keyed `Event.key` ("<page_id>:<user_id>", "<page_id>:" for
page-wide events), so one user's events stay in one partition. Every `Unsupported` element goes
to `<prefix>dead-letter` with its raw JSON and the reason, keyed by the page id when known.
A record too large for Kafka (impossible for Meta's real payloads, possible for a hand-made one)
is replaced by a dead letter that says so, with an excerpt: the body must still be answerable
with a 200, or Meta would retry it until it unsubscribes the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from schemas.events import Event, encode_event
from schemas.topics import Topics
from services.common.deadletter import dead_letter_record
from services.ingest.publisher import Record
from services.ingest.recent import RecentKeys
from windowgate.meta.normalise import Normalised, Unsupported

SERVICE: Final = "ingest"

MAX_RECORD_BYTES: Final = 1_000_000
"""Key + value above this would exceed the producer's and broker's 1 MiB default limits."""

EXCERPT_CHARS: Final = 10_000


@dataclass(slots=True)
class Outbox:
    records: list[Record] = field(default_factory=list)
    dedup_keys: list[str] = field(default_factory=list)
    """The dedup keys of the events among `records`, remembered once they are acknowledged."""
    kinds: list[str] = field(default_factory=list)
    """`KIND` of each event among `records`."""
    dead_letters: list[str] = field(default_factory=list)
    """Cause of each dead letter among `records`: "unsupported" or "oversize"."""
    skipped: int = 0
    """Events left out because an identical one was acknowledged moments ago."""


def build_outbox(
    normalised: Normalised, topics: Topics, seen: RecentKeys, at_ms: int, envelope: str
) -> Outbox:
    """`envelope` is the body's `object` ("page" / "instagram"), kept in dead letters' source."""
    out = Outbox()
    events_topic = topics.events
    for event in normalised.events:
        dedup = event.dedup_key
        if dedup and dedup in seen:
            out.skipped += 1
            continue
        key = event.key.encode()
        value = encode_event(event)
        if len(key) + len(value) > MAX_RECORD_BYTES:
            out.records.append(_oversize_event(event, len(key) + len(value), topics, at_ms))
            out.dead_letters.append("oversize")
            continue
        out.records.append((events_topic, key, value))
        out.kinds.append(event.KIND)
        if dedup:
            out.dedup_keys.append(dedup)
    for item in normalised.unsupported:
        out.records.append(_unsupported(item, topics, at_ms, envelope))
        out.dead_letters.append("unsupported")
    return out


def _unsupported(item: Unsupported, topics: Topics, at_ms: int, envelope: str) -> Record:
    source: dict[str, Any] = {"path": item.path, "object": envelope}
    if item.page_id is not None:
        source["page_id"] = item.page_id
    if item.user_id is not None:
        source["user_id"] = item.user_id
    key = item.page_id.encode() if item.page_id else None
    value = dead_letter_record(SERVICE, item.reason, item.raw, at_ms, source)
    if len(value) + (len(key) if key else 0) > MAX_RECORD_BYTES:
        raw = orjson.dumps(item.raw, default=str).decode()
        excerpt = raw[:EXCERPT_CHARS] + "…"
        reason = f"{item.reason} (raw element of {len(raw):,} characters truncated)"
        source.pop("page_id", None)  # ids are unbounded strings: keep the record small
        source.pop("user_id", None)
        key = key if key is not None and len(key) <= EXCERPT_CHARS else None
        value = dead_letter_record(SERVICE, reason, excerpt, at_ms, source)
    return (topics.dead_letter, key, value)


def _oversize_event(event: Event, size: int, topics: Topics, at_ms: int) -> Record:
    """The event's identity and an excerpt of its JSON: enough to find the original body."""
    excerpt = encode_event(event)[:EXCERPT_CHARS].decode(errors="ignore") + "…"
    page = event.page_id if len(event.page_id) <= 100 else None
    return (
        topics.dead_letter,
        page.encode() if page else None,
        dead_letter_record(
            SERVICE,
            f"{event.KIND} event of {size:,} bytes is too large for a Kafka record",
            excerpt,
            at_ms,
            {"kind": event.KIND, "page_id": page, "dedup_key": event.dedup_key[:200]},
        ),
    )
