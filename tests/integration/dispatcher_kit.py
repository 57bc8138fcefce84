"""What the dispatcher's integration tests share: pages, decisions built with the real core, Kafka
readers and writers, a fake window (until the real worker runs in the test), the subprocess.

Decisions are built the way the window worker builds them: fold the user's events, `decide` at the
wall clock (the dispatcher re-checks validity against it), wrap in a `DecisionRecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from devtools.devbroker import free_port
from devtools.window_harness import WindowProcess
from schemas.decision import DecisionRecord, encode_decision_record
from schemas.events import (
    Event,
    MessageReceived,
    OtnOptin,
    RecurringOptin,
    decode_event,
    encode_event,
)
from schemas.request import SendRequest, decode_request
from schemas.state import PageState, UserState
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.common.topics import ensure_topics
from services.dispatcher.config import DispatcherConfig
from services.dispatcher.delivery.dispatchlog import Attempt, Done, decode_record, ensure_log_topic
from windowgate.client import Tail
from windowgate.core.decide import decide
from windowgate.core.fold import fold
from windowgate.core.pages import PageConfig, parse_pages
from windowgate.core.rulebook import RuleBook, load_rules
from windowgate.offline import OfflineGateway

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE_EU = "682498171943165"  # HUMAN_AGENT, region DE (legacy recurring), CUSTOMER_FEEDBACK on
PAGE_US = "542998526103632"  # region US, an ad account (marketing messages)
TOKENS = {PAGE_EU: "eu-page-token", PAGE_US: "us-page-token"}
API_TOKEN = "test-api-token"
PAGES_JSON: dict[str, Any] = {
    "pages": {
        PAGE_EU: {
            "access_token": TOKENS[PAGE_EU],
            "human_agent": True,
            "region": "DE",
            "rules": {"R-TAG-CFB": {"enabled": True}},
        },
        PAGE_US: {
            "access_token": TOKENS[PAGE_US],
            "region": "US",
            "ad_account_id": "act_1234567890",
        },
    }
}
HOUR = 3_600_000
DEADLINE_S = 30.0
"""How long a test waits for anything. Also the services' own waits (Graph calls, decisions,
outcomes): a test that is not about a timeout must not meet one on a busy machine."""


def pages() -> dict[str, PageConfig]:
    return parse_pages(PAGES_JSON)


def rules() -> RuleBook:
    return load_rules(None, pages())


def write_pages(directory: Path) -> Path:
    path = directory / "pages.json"
    path.write_bytes(orjson.dumps(PAGES_JSON))
    return path


def window_worker(
    bootstrap: str,
    prefix: str,
    tmp: Path,
    partitions: int,
    pages: Path,
    **env: str,
) -> WindowProcess:
    """A window worker process (not started) on the kit's topics, API token and a pages file;
    `env`: more of its environment (WINDOW_BROADCAST_SLICE, test hooks...)."""
    return WindowProcess(
        bootstrap,
        prefix=prefix,
        port=free_port(),
        data_dir=tmp / "window",
        log=tmp / "window.log",
        partitions=partitions,
        token=API_TOKEN,
        extra_env={"WINDOWGATE_PAGES": str(pages), **env},
    )


def config(
    bootstrap: str, prefix: str, graph_url: str, partitions: int = 2, **kw: Any
) -> DispatcherConfig:
    fields: dict[str, Any] = {
        "bootstrap": bootstrap,
        "prefix": prefix,
        "partitions": partitions,
        "graph_url": graph_url,
        "graph_version": "v25.0",
        "api_tokens": (API_TOKEN,),
        "port": 0,
        "group": f"{prefix}dispatcher",
        "graph_timeout_s": DEADLINE_S,
        "backoff_s": 0.05,
        "backoff_cap_s": 0.2,
        "recent": 10_000,
        "wait_s": DEADLINE_S,
        "outcome_wait_s": DEADLINE_S,
    }
    fields.update(kw)
    return DispatcherConfig(**fields)


async def create_topics(bootstrap: str, prefix: str, partitions: int) -> Topics:
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, partitions)
    await ensure_log_topic(bootstrap, f"{prefix}dispatch-log", partitions, 24 * HOUR)
    return topics


# ---- users and decisions -----------------------------------------------------------------------


@dataclass
class User:
    """One user's events, folded as the window would; `decide` builds the dispatcher's input."""

    page_id: str
    user_id: str
    events: list[Event] = field(default_factory=list)

    def state(self) -> UserState:
        state = UserState(page_id=self.page_id, user_id=self.user_id)
        for event in self.events:
            state = fold(state, event)
        return state

    def wrote(self, ago_ms: int = HOUR) -> User:
        at = now_ms() - ago_ms
        self.events.append(
            MessageReceived(
                page_id=self.page_id,
                user_id=self.user_id,
                timestamp=at,
                mid=f"m-{at}-{len(self.events)}",
            )
        )
        return self

    def opted_in(self, token: str, topic: str = "restock", ago_ms: int = 2 * HOUR) -> User:
        self.events.append(
            OtnOptin(
                page_id=self.page_id,
                user_id=self.user_id,
                timestamp=now_ms() - ago_ms,
                token=token,
                topic=topic,
            )
        )
        return self

    def subscribed(self, token: str, topic: str = "weekly-deals") -> User:
        self.events.append(
            RecurringOptin(
                page_id=self.page_id,
                user_id=self.user_id,
                timestamp=now_ms() - 2 * HOUR,
                token=token,
                topic=topic,
                title="Weekly deals",
                frequency="WEEKLY",
            )
        )
        return self

    def decide(
        self,
        request_id: str,
        book: RuleBook,
        *,
        at: int | None = None,
        page: PageState | None = None,
        **request: Any,
    ) -> DecisionRecord:
        """Decide a request (text "hello <request_id>" unless given) now, or `at`."""
        request.setdefault("message", {"text": f"hello {request_id}"})
        send = SendRequest(
            request_id=request_id, page_id=self.page_id, user_id=self.user_id, **request
        )
        decision = decide(self.state(), send, now_ms() if at is None else at, book, page)
        return DecisionRecord(decision, send.message)


# ---- Kafka --------------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, records: Iterable[DecisionRecord]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for record in records:
            d = record.decision
            await producer.send(
                topic, encode_decision_record(record), key=f"{d.page_id}:{d.user_id}".encode()
            )
        await producer.flush()
    finally:
        await producer.stop()


class Collector(Tail):
    """Everything written to the events topic and the dispatch log, from their beginning."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        super().__init__(bootstrap, [topics.events, f"{topics.prefix}dispatch-log"], backfill=2**62)
        self.events: list[Event] = []
        self.done: dict[str, list[Done]] = {}
        self.attempts: dict[str, int] = {}

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.value is None:
            return
        if record.topic.endswith("dispatch-log"):
            decoded = decode_record(record.value)
            if isinstance(decoded, Done):
                self.done.setdefault(decoded.request_id, []).append(decoded)
            elif isinstance(decoded, Attempt):
                self.attempts[decoded.request_id] = self.attempts.get(decoded.request_id, 0) + 1
        else:
            self.events.append(decode_event(record.value))

    def events_of(self, request_id: str) -> list[Event]:
        """The dispatcher's events for one request (found by its dedup keys)."""
        return [e for e in self.events if e.dedup_key.startswith(f"dispatch:{request_id}:")]

    async def outcome(self, request_id: str, deadline_s: float = DEADLINE_S) -> Done:
        await until(lambda: request_id in self.done, f"an outcome for {request_id}", deadline_s)
        return self.done[request_id][0]


async def until(check: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll `check` until it holds; fail with `what` after the deadline (never a fixed sleep)."""
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {deadline_s:.0f} s")
        await asyncio.sleep(0.05)


class FakeWindow:
    """Plays the window worker until it runs here: send-requests in, DecisionRecords out.

    Decides with the offline gateway over the events the test gives it, in the same shape the
    window worker produces (DecisionRecord on `decisions`, RequestDecided on `events`).
    """

    def __init__(self, bootstrap: str, topics: Topics, book: RuleBook) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.gateway = OfflineGateway(book)
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    def know(self, events: Sequence[Event]) -> None:
        self.gateway.apply_events(events)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topics.send_requests,
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.topics.prefix}fake-window",
            auto_offset_reset="earliest",
        )
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self._consumer.start()
        await self._producer.start()
        self._task = asyncio.create_task(self._run(self._consumer, self._producer))

    async def _run(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        async for message in consumer:
            request = decode_request(message.value or b"")
            decision = self.gateway.decide(request, now_ms())
            key = request.key.encode()
            record = DecisionRecord(decision, request.message, request.graph_fields)
            await producer.send(self.topics.decisions, encode_decision_record(record), key=key)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()


async def publish_events(bootstrap: str, topic: str, events: Iterable[Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send(topic, encode_event(event), key=event.key.encode())
        await producer.flush()
    finally:
        await producer.stop()


# ---- the service as a process -------------------------------------------------------------------


class DispatcherProcess:
    """`python -m services.dispatcher` with the given environment; killable with SIGKILL."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra: str) -> None:
        env = {**os.environ, **self.env, **extra}
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.dispatcher"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def exited(self, deadline_s: float = DEADLINE_S) -> int:
        proc = self.proc
        assert proc is not None
        await until(lambda: proc.poll() is not None, "dispatcher exit", deadline_s)
        return proc.returncode

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]
