"""What the HTTP API process reads besides decisions: delivery outcomes, and token owners.

- `OutcomeWatcher` tails the dispatch log for `done` records: the delivery outcome of a request
  (and Meta's own answer, which the proxy hands back), with waiters by request_id.
- `TokenIndex` reads the opt-ins of `<prefix>events` from the beginning: which user and topic an
  OTN / recurring token belongs to, so the proxy can route a call addressed to a token. An opt-in
  never changes owner, so this index cannot disagree with the window's state (I1); it is only
  consulted to route, never to decide. Comments and visitor posts are indexed the same way
  (comment / post id → its author's key, `topic` = the recipient field), for private replies
  addressed by `recipient.comment_id` / `post_id` (R-WIN-5).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import ConsumerRecord

from schemas.codec import SchemaError
from schemas.events import CommentReceived, OtnOptin, RecurringOptin, decode_event
from services.dispatcher.delivery.dispatchlog import Done, decode_record
from windowgate.client import AwaitingTail, Tail


class OutcomeWatcher(AwaitingTail[Done]):
    """Tails the dispatch log's `done` records: the delivery outcome of each request."""

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value is None:
            return
        try:
            decoded = decode_record(record.value)
        except SchemaError:
            return
        if isinstance(decoded, Done):
            self.remember(decoded)

    def remember(self, done: Done) -> None:
        self.keep(done.request_id, done)


@dataclass(frozen=True, slots=True)
class TokenOwner:
    page_id: str
    user_id: str
    topic: str | None
    platform: str


_OPTIN_MARKERS = (b'"kind":"otn_optin"', b'"kind":"recurring_optin"', b'"kind":"comment"')


class TokenIndex(Tail):
    """token → its owner, from every opt-in on the events topic (read from the beginning)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, [topic], backfill=2**62)
        self.owners: dict[str, TokenOwner] = {}

    def lookup(self, token: str) -> TokenOwner | None:
        return self.owners.get(token)

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        raw = record.value
        if raw is None or not any(marker in raw for marker in _OPTIN_MARKERS):
            return  # the events topic is mostly messages and reads: skip them undecoded
        try:
            event = decode_event(raw)
        except SchemaError:
            return
        if isinstance(event, CommentReceived):
            field = "comment_id" if event.comment_id else "post_id"
            owner = TokenOwner(event.page_id, event.user_id, field, event.platform)
            self.owners.setdefault(event.target, owner)
        elif isinstance(event, OtnOptin | RecurringOptin):
            topic = event.topic or (event.title if isinstance(event, RecurringOptin) else None)
            self.owners.setdefault(
                event.token, TokenOwner(event.page_id, event.user_id, topic, event.platform)
            )
