"""Traffic like Meta's and like a caller's, bounded in count and time, and the ledger of it.

Webhooks: signed bodies in Meta's shapes for a few hundred users on a few pages: messages (open
the window), OTN opt-ins (tokens), some batched (several entries and elements), some with old
timestamps, some redelivered byte for byte; each body is re-posted on any non-200 answer or
connection error, with backoff, as Meta does. The events a body carries are what the core's own
`normalise` reads from it.

Requests: `POST /v1/messages` to either dispatcher (bearer token), purposes auto / otn / response,
some resubmitted later with the same request_id; re-posted on 5xx and connection errors. Each
message's text names its request id, so the Graph stand-in's log maps calls to requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from schemas.broadcast import Audience, BroadcastCommand, BroadcastSpec, CommandKind, encode_command
from schemas.events import Event, OtnOptin
from services.common.runtime import now_ms
from services.ingest.signature import sign
from windowgate.core.timeconst import HOUR_MS
from windowgate.meta.normalise import normalise

TOPICS = ("back-in-stock", "price-drop")
TEXT_PREFIX = "chaos "
BROADCAST_PREFIX = "chaos-broadcast "
"""A broadcast's message text: one text for every recipient (the recipient is in the call)."""
OLD_MS = 30 * HOUR_MS  # an old timestamp: outside any 24 h window


def broadcast_of(text: str | None) -> str | None:
    """The broadcast id a Graph call's message text carries, if it is one of our broadcasts."""
    if text is None or not text.startswith(BROADCAST_PREFIX):
        return None
    return text[len(BROADCAST_PREFIX) :]


def broadcast_specs(run_id: str, page: str) -> tuple[BroadcastSpec, ...]:
    """The run's broadcasts on `page`: to every holder of a TOPICS[0] token (`auto`: the open
    window when there is one, else the token), and to every user of the page (`auto` with no
    topic: the open window, else refused), the larger one, still fanning out when it is paused."""
    restock, everyone = f"chaos-{run_id}-restock", f"chaos-{run_id}-everyone"
    return (
        BroadcastSpec(
            broadcast_id=restock,
            page_id=page,
            message={"text": f"{BROADCAST_PREFIX}{restock}"},
            audience=Audience(topic=TOPICS[0]),
        ),
        BroadcastSpec(
            broadcast_id=everyone,
            page_id=page,
            message={"text": f"{BROADCAST_PREFIX}{everyone}"},
        ),
    )


def broadcast_command(spec: BroadcastSpec, kind: CommandKind) -> bytes:
    """One command record's value; written to every partition, key the broadcast id."""
    return encode_command(
        BroadcastCommand(
            kind=kind,
            broadcast_id=spec.broadcast_id,
            page_id=spec.page_id,
            at=now_ms(),
            spec=spec if kind == "create" else None,
        )
    )


def request_id_of(text: str | None) -> str | None:
    """The request id a Graph call's message text carries, if it is one of ours."""
    if text is None or not text.startswith(TEXT_PREFIX):
        return None
    return text[len(TEXT_PREFIX) :]


@dataclass
class Body:
    raw: bytes
    events: tuple[Event, ...]
    statuses: list[int] = field(default_factory=list)  # 0: connection error / timeout
    accepted_at: float | None = None  # monotonic: its first 200

    @property
    def accepted(self) -> bool:
        return 200 in self.statuses


@dataclass
class Request:
    wire: dict[str, Any]
    submissions: int = 0
    statuses: list[int] = field(default_factory=list)  # 0: connection error / timeout
    answers: list[dict[str, Any]] = field(default_factory=list)  # 200 bodies (decisions)

    @property
    def request_id(self) -> str:
        return str(self.wire["request_id"])

    @property
    def answered(self) -> bool:
        return any(s in (200, 202) for s in self.statuses)


@dataclass
class Ledger:
    bodies: list[Body] = field(default_factory=list)
    requests: dict[str, Request] = field(default_factory=dict)
    ingest_status: Counter[int] = field(default_factory=Counter)
    api_status: Counter[int] = field(default_factory=Counter)

    def progress(self) -> str:
        accepted = sum(1 for b in self.bodies if b.accepted)
        answered = sum(1 for r in self.requests.values() if r.answered)
        return (
            f"webhooks {accepted}/{len(self.bodies)} accepted "
            f"(503: {self.ingest_status[503]}, conn errors: {self.ingest_status[0]}), "
            f"requests {answered}/{len(self.requests)} answered "
            f"(503: {self.api_status[503]}, conn errors: {self.api_status[0]})"
        )


def backoff(attempt: int) -> float:
    return float(min(0.5 * 2**attempt, 4.0))


class Traffic:
    """Makes and posts the traffic; every body and request goes into `ledger` first."""

    def __init__(
        self,
        *,
        rng: random.Random,
        run_id: str,
        pages: dict[str, str],
        users_per_page: int,
        ingest_url: str,
        dispatcher_urls: list[str],
        app_secret: str,
        api_token: str,
        give_up_at: float,
    ) -> None:
        self.rng = rng
        self.run_id = run_id
        self.pages = list(pages)
        self.users = {
            page: [str(10**15 + rng.randrange(10**15)) for _ in range(users_per_page)]
            for page in pages
        }
        self.heard: dict[str, list[str]] = {page: [] for page in pages}  # users who wrote
        self.opted: list[tuple[str, str, str]] = []  # (page, user, topic) of accepted opt-ins
        self.ingest_url = ingest_url
        self.dispatcher_urls = dispatcher_urls
        self.secret = app_secret.encode()
        self.api_token = api_token
        self.give_up_at = give_up_at  # monotonic: no retry after this
        self.ledger = Ledger()
        self.sequence = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None

    # ---- making traffic ---------------------------------------------------------------------

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    def _element(self, page: str, user: str, *, message: bool | None = None) -> dict[str, Any]:
        ts = now_ms() - (OLD_MS if self.rng.random() < 0.12 else 0)
        n = self._next()
        element: dict[str, Any] = {
            "sender": {"id": user},
            "recipient": {"id": page},
            "timestamp": ts,
        }
        if message if message is not None else self.rng.random() < 0.65:
            element["message"] = {"mid": f"m_chaos_{self.run_id}_{n}", "text": "hi"}
        else:
            element["optin"] = {
                "type": "one_time_notif_req",
                "payload": self.rng.choice(TOPICS),
                "one_time_notif_token": f"otn-{self.run_id}-{n}",
            }
        return element

    def new_body(self) -> Body:
        entries = []
        batched = self.rng.random() < 0.2
        for page in self.rng.sample(self.pages, self.rng.randint(2, 3) if batched else 1):
            elements = [
                self._element(page, self.rng.choice(self.users[page]))
                for _ in range(self.rng.randint(1, 2) if batched else 1)
            ]
            entries.append({"id": page, "time": now_ms(), "messaging": elements})
        return self._body({"object": "page", "entry": entries})

    def probe_body(self, page: str, user: str) -> Body:
        element = {
            "sender": {"id": user},
            "recipient": {"id": page},
            "timestamp": now_ms(),
            "message": {"mid": f"m_chaos_{self.run_id}_{self._next()}", "text": "probe"},
        }
        return self._body(
            {"object": "page", "entry": [{"id": page, "time": now_ms(), "messaging": [element]}]}
        )

    def _body(self, envelope: dict[str, Any]) -> Body:
        raw = orjson.dumps(envelope)
        body = Body(raw, normalise(envelope).events)
        self.ledger.bodies.append(body)
        return body

    def new_request(self, page: str | None = None, user: str | None = None) -> Request | None:
        probe = page is not None and user is not None
        if page is None or user is None:
            candidates = [p for p in self.pages if self.heard[p]]
            if not candidates:
                return None
            page = self.rng.choice(candidates)
            user = self.rng.choice(self.heard[page])
        request_id = f"chaos-{self.run_id}-{self._next()}"
        wire: dict[str, Any] = {
            "request_id": request_id,
            "page_id": page,
            "user_id": user,
            "message": {"text": f"{TEXT_PREFIX}{request_id}"},
        }
        roll = self.rng.random()
        if roll < 0.4:
            wire["purpose"] = "auto"
            if self.rng.random() < 0.5:
                wire["topic"] = self.rng.choice(TOPICS)
        elif roll < 0.7:
            wire["purpose"] = "otn"
            wire["topic"] = self.rng.choice(TOPICS)
        else:
            wire["purpose"] = "response"
        if "topic" in wire and self.opted and self.rng.random() < 0.8 and not probe:
            # Mostly users who did opt in to the topic: tokens get spent, and asked for again.
            wire["page_id"], wire["user_id"], wire["topic"] = self.rng.choice(self.opted)
        request = Request(wire)
        self.ledger.requests[request_id] = request
        return request

    def old_request(self) -> Request | None:
        """One submitted before, to submit again with the same request_id (and body)."""
        answered = [r for r in self.ledger.requests.values() if r.answered]
        return self.rng.choice(answered) if answered else None

    # ---- posting ----------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def post_body(self, body: Body, until: float | None = None) -> bool:
        """Post until 200 (Meta re-posts on any other answer), or until `until` / `give_up_at`."""
        assert self.session is not None
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(self.secret, body.raw),
        }
        attempt = 0
        while True:
            status = 0
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with self.session.post(
                    f"{self.ingest_url}/webhook", data=body.raw, headers=headers
                ) as answer:
                    await answer.read()
                    status = answer.status
            body.statuses.append(status)
            self.ledger.ingest_status[status] += 1
            if status == 200:
                if body.accepted_at is None:
                    body.accepted_at = time.monotonic()
                for event in body.events:
                    heard = self.heard[event.page_id]
                    if event.user_id not in heard:
                        heard.append(event.user_id)
                    if isinstance(event, OtnOptin):
                        self.opted.append((event.page_id, event.user_id, event.topic))
                return True
            if status in (400, 403, 413) or time.monotonic() > (until or self.give_up_at):
                return False
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def post_request(
        self, request: Request, until: float | None = None
    ) -> dict[str, Any] | None:
        """Post until answered (200/202), re-posting on 5xx and connection errors, alternating
        dispatchers, or until `until` / `give_up_at`. Returns the decision of a 200 answer."""
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.api_token}"}
        request.submissions += 1
        attempt = 0
        while True:
            url = self.dispatcher_urls[(self.sequence + attempt) % len(self.dispatcher_urls)]
            status, data = 0, None
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with self.session.post(
                    f"{url}/v1/messages", json=request.wire, headers=headers
                ) as answer:
                    raw = await answer.read()
                    status = answer.status
                    with contextlib.suppress(orjson.JSONDecodeError):
                        data = orjson.loads(raw)
            request.statuses.append(status)
            self.ledger.api_status[status] += 1
            if status == 200 and isinstance(data, dict):
                request.answers.append(data)
                return data
            if 200 <= status < 500 or time.monotonic() > (until or self.give_up_at):
                return None
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def tick(self, webhooks: int, requests: int) -> None:
        """Start one second's worth of traffic (posted concurrently, in the background)."""
        for _ in range(webhooks):
            old = [b for b in self.ledger.bodies[-200:] if b.accepted]
            redeliver = old and self.rng.random() < 0.08  # Meta redelivers a delivered body
            body = self.rng.choice(old) if redeliver else self.new_body()
            self.spawn(self.post_body(body))
        for _ in range(requests):
            request = self.old_request() if self.rng.random() < 0.1 else None
            request = request or self.new_request()
            if request is not None:
                self.spawn(self.post_request(request))

    async def drain(self, timeout_s: float) -> int:
        """Wait for the posts in flight; returns how many were still running at the deadline."""
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        return len(pending)
