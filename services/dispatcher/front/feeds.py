"""What the HTTP API process reads besides decisions: delivery outcomes, and token owners.

- `OutcomeWatcher` tails the dispatch log for `done` records: the delivery outcome of a request
  (and Meta's own answer, which the proxy hands back), with waiters by request_id.
- `TokenIndex` reads the opt-ins of `<prefix>events` from the beginning: which user and topic an
  OTN / recurring token belongs to, so the proxy can route a call addressed to a token. An opt-in
  never changes owner, so this index cannot disagree with the window's state (I1); it is only
  consulted to route, never to decide. Comments and visitor posts are indexed the same way
  (comment / post id → its author's key, `topic` = the recipient field), for private replies
  addressed by `recipient.comment_id` / `post_id` (R-WIN-5). Comments are many and a reply is
  possible for days only, so they are kept for `comment_horizon` (the rule's days, plus a day in
  which a late reply still gets the window's own "expired" refusal) and then forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import ConsumerRecord

from schemas.codec import SchemaError
from schemas.events import CommentReceived, OtnOptin, RecurringOptin, decode_event
from services.common.runtime import now_ms
from services.dispatcher.delivery.dispatchlog import Done, decode_record
from windowgate.client import AwaitingTail, Tail
from windowgate.core.rulebook import RuleBook
from windowgate.core.timeconst import DAY_MS


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


_PRUNE_FROM = 10_000
"""The comments held before the first pruning pass; then pruning runs each time they double."""


def comment_horizon(rules: RuleBook, now: int) -> int | None:
    """How long the index keeps a comment: the longest private-reply rule in force (R-WIN-5) plus
    a day; None (keep every comment) when no such rule is in force."""
    days = [r.int_param("days") for r in rules.in_force_at(now) if r.kind == "private_reply"]
    return (max(days) + 1) * DAY_MS if days else None


class TokenIndex(Tail):
    """token → its owner, from every opt-in on the events topic (read from the beginning); and
    comment / post id → its author, for the comments of the last `comment_horizon_ms`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        comment_horizon_ms: int | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        super().__init__(bootstrap, [topic], backfill=2**62)
        self.owners: dict[str, TokenOwner] = {}
        self.comments: dict[str, tuple[TokenOwner, int]] = {}
        self.comment_horizon_ms = comment_horizon_ms
        self.clock = clock
        self._prune_at = _PRUNE_FROM

    def lookup(self, token: str) -> TokenOwner | None:
        owner = self.owners.get(token)
        if owner is None:
            comment = self.comments.get(token)
            owner = comment[0] if comment is not None else None
        return owner

    def remember_comment(self, event: CommentReceived) -> None:
        """Index a comment unless it is past the horizon; prune the index as it doubles."""
        if self.comment_horizon_ms is not None:
            oldest = self.clock() - self.comment_horizon_ms
            if event.timestamp < oldest:
                return
            if len(self.comments) >= self._prune_at:
                self.comments = {k: v for k, v in self.comments.items() if v[1] >= oldest}
                self._prune_at = max(_PRUNE_FROM, 2 * len(self.comments))
        field = "comment_id" if event.comment_id else "post_id"
        owner = TokenOwner(event.page_id, event.user_id, field, event.platform)
        self.comments.setdefault(event.target, (owner, event.timestamp))

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        raw = record.value
        if raw is None or not any(marker in raw for marker in _OPTIN_MARKERS):
            return  # the events topic is mostly messages and reads: skip them undecoded
        try:
            event = decode_event(raw)
        except SchemaError:
            return
        if isinstance(event, CommentReceived):
            self.remember_comment(event)
        elif isinstance(event, OtnOptin | RecurringOptin):
            topic = event.topic or (event.title if isinstance(event, RecurringOptin) else None)
            self.owners.setdefault(
                event.token, TokenOwner(event.page_id, event.user_id, topic, event.platform)
            )
