"""What the HTTP API process reads besides decisions: delivery outcomes, and token owners.

- `OutcomeWatcher` tails the dispatch log for `done` records: the delivery outcome of a request
  (and Meta's own answer, which the proxy hands back), with waiters by request_id.
- `TokenIndex` reads the opt-ins of `<prefix>events` from the beginning: which user and topic an
  OTN / recurring token belongs to, so the proxy can route a call addressed to a token. An opt-in
  never changes owner, so this index cannot disagree with the window's state (I1); it is only
  consulted to route, never to decide.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from aiokafka import ConsumerRecord

from schemas.codec import SchemaError
from schemas.events import OtnOptin, RecurringOptin, decode_event
from services.dispatcher.dispatchlog import Done, decode_record
from windowgate.client import Tail


class OutcomeWatcher(Tail):
    def __init__(self, bootstrap: str, topic: str, recent: int, backfill: int = 0) -> None:
        super().__init__(bootstrap, [topic], backfill)
        self.recent_size = recent
        self._recent: OrderedDict[str, Done] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[Done]]] = {}

    def expect(self, request_id: str) -> asyncio.Future[Done]:
        future: asyncio.Future[Done] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, []).append(future)
        future.add_done_callback(lambda f: self._forget(request_id, f))
        return future

    def _forget(self, request_id: str, future: asyncio.Future[Done]) -> None:
        waiters = self._waiters.get(request_id)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[request_id]

    def recent(self, request_id: str) -> Done | None:
        return self._recent.get(request_id)

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
        self._recent[done.request_id] = done
        self._recent.move_to_end(done.request_id)
        while len(self._recent) > self.recent_size:
            self._recent.popitem(last=False)
        for future in list(self._waiters.get(done.request_id, ())):
            if not future.done():
                future.set_result(done)


@dataclass(frozen=True, slots=True)
class TokenOwner:
    page_id: str
    user_id: str
    topic: str | None
    platform: str


_OPTIN_MARKERS = (b'"kind":"otn_optin"', b'"kind":"recurring_optin"')


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
        if isinstance(event, OtnOptin | RecurringOptin):
            topic = event.topic or (event.title if isinstance(event, RecurringOptin) else None)
            self.owners.setdefault(
                event.token, TokenOwner(event.page_id, event.user_id, topic, event.platform)
            )
