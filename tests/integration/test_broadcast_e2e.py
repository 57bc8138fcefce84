"""A broadcast end to end through the real stack, driven through the HTTP API only (issue 12).

A real broker, a real window worker (a subprocess), a real DispatcherService (delivery and the
HTTP front, `WINDOW_URL` at the worker) and the Graph stand-in, which records every call. Fifty
users of one page are seeded through the events topic (OTN tokens on a topic, some expired, open
and closed windows) and the label API; then every step an operator takes goes through `/v1`:
a dry run, broadcasts to the topic's holders and to a label, following the status until `done`,
a pause right after create and a resume, a cancel, a resubmission and a conflicting one. What
reached Meta is read off the stand-in: one call per recipient, no token twice.

The window runs with slices of one key (so a fan-out takes many transactions) and freezes itself
(SIGSTOP) when it has decided one chosen recipient of the paused (and of the cancelled)
broadcast, before that slice commits: the pause and the cancel are written while the fan-out is
provably under way, not before or after it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition

from devtools.devbroker import unique_name
from devtools.graph_standin import GraphStandIn
from devtools.window_harness import WindowProcess
from schemas.broadcast import BroadcastProgress, decode_progress, recipient_request_id
from schemas.events import Event, MessageDelivered, MessageRead, MessageReceived, OtnOptin
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.dispatcher.service import DispatcherService
from services.window.processing import partition_for
from tests.integration.dispatcher_kit import (
    API_TOKEN,
    DEADLINE_S,
    HOUR,
    PAGE_EU,
    TOKENS,
    config,
    create_topics,
    publish_events,
    rules,
    window_worker,
    write_pages,
)
from tests.integration.test_window_worker import _stopped
from windowgate.core.timestamps import ms_to_iso

pytestmark = pytest.mark.integration

PARTITIONS = 2
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
TOPIC = "restock"
SECOND_TOPIC = "price-drop"  # held by the holders of TOPIC whose token has not expired
DAY = 24 * HOUR


def user(n: int) -> str:
    """Meta's shape: digits only (fresh topics per run, so fixed ids never meet old state)."""
    return str(1_000_000_000_000_100 + n)


# Who was seeded, by what makes the core decide differently for them.
HOLDERS_CLOSED = [user(n) for n in range(0, 12)]  # an OTN token on TOPIC, the window closed
HOLDERS_OPEN = [user(n) for n in range(12, 16)]  # a token and an open window
HOLDERS_EXPIRED = [user(n) for n in range(16, 18)]  # a token over a year old
VIP_OPEN = [user(n) for n in range(18, 30)]  # label vip (the API), the window open
VIP_CLOSED = [user(n) for n in range(30, 36)]  # label vip, the window closed
WRITERS = [user(n) for n in range(36, 50)]  # the window open, nothing else
HOLDERS = HOLDERS_CLOSED + HOLDERS_OPEN + HOLDERS_EXPIRED
VIP = VIP_OPEN + VIP_CLOSED
EVERYONE = HOLDERS + VIP + WRITERS
WINDOW_OPEN = HOLDERS_OPEN + VIP_OPEN + WRITERS

PAUSED_ID = "pause.hold"
CANCELLED_ID = "cancel.hold"
HOLD = ".hold:"
"""The window freezes when it decides `HOLD + frozen_recipient()`, a substring of that user's
request id in each of the two broadcasts above (`bc:<broadcast_id>:<user>`): once each."""


def key(user_id: str) -> bytes:
    return f"{PAGE_EU}:{user_id}".encode()


def frozen_recipient() -> str:
    """The recipient the window freezes at: partition 0's second key in walk order that a
    broadcast to the whole page messages (its window is open), so the walk has begun and most of
    partition 0's keys are still ahead when the pause or the cancel is written."""
    mine = sorted(key(u) for u in EVERYONE if partition_for(key(u), PARTITIONS) == 0)
    allowed = [k for k in mine if k.decode().split(":")[1] in WINDOW_OPEN]
    assert len(mine) > 20 and len(allowed) > 2, "the seeded users: too few in partition 0"
    return allowed[1].decode().split(":")[1]


def token_of(user_id: str, topic: str) -> str:
    return f"{topic}-{user_id}"


def seed_events(now: int) -> list[Event]:
    """Every seeded user's webhooks, as ingest would put them on the events topic."""
    events: list[Event] = []

    def wrote(user_id: str, ago: int) -> None:
        events.append(
            MessageReceived(
                page_id=PAGE_EU, user_id=user_id, timestamp=now - ago, mid=f"m-{user_id}-{ago}"
            )
        )

    def opted_in(user_id: str, ago: int, topic: str = TOPIC) -> None:
        events.append(
            OtnOptin(
                page_id=PAGE_EU,
                user_id=user_id,
                timestamp=now - ago,
                token=token_of(user_id, topic),
                topic=topic,
            )
        )

    for u in HOLDERS_CLOSED:
        opted_in(u, 30 * HOUR)
        opted_in(u, 30 * HOUR, SECOND_TOPIC)
    for u in HOLDERS_OPEN:
        opted_in(u, 30 * HOUR)
        opted_in(u, 30 * HOUR, SECOND_TOPIC)
        wrote(u, HOUR)
    for u in HOLDERS_EXPIRED:
        opted_in(u, 400 * DAY)
    for u in VIP_OPEN + WRITERS:
        wrote(u, HOUR)
    for u in VIP_CLOSED:
        wrote(u, 30 * HOUR)
    return events


@dataclass
class Stack:
    bootstrap: str
    topics: Topics
    window: WindowProcess
    standin: GraphStandIn
    url: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, f"{self.url}{path}", json=body, headers=AUTH
        ) as answer:
            return answer.status, await answer.json(content_type=None)

    async def status(self, broadcast_id: str) -> dict[str, Any]:
        status, view = await self.call("GET", f"/v1/broadcasts/{broadcast_id}")
        assert status == 200, view
        return dict(view)

    async def until_status(
        self, broadcast_id: str, done: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Follow `GET /v1/broadcasts/{id}` until `done(view)`, or fail at the deadline."""
        latest: dict[str, Any] = {}

        async def check() -> bool:
            nonlocal latest
            latest = await self.status(broadcast_id)
            return done(latest)

        await until(check, f"{broadcast_id}: {what}", self.window, lambda: latest)
        return latest

    async def until_labels(self, user_id: str, labels: list[str]) -> None:
        """Until the window's user query shows exactly these labels (its committed state)."""

        async def check() -> bool:
            status, body, _ = await self.window.get(f"/v1/pages/{PAGE_EU}/users/{user_id}")
            return status == 200 and body["state"].get("labels", []) == labels

        await until(check, f"labels {labels} on {user_id}", self.window)

    def calls_for(self, text: str) -> Counter[str]:
        """Per user, the calls Graph got with this text: addressed by id, or by the one-time
        token the user was seeded with (`<topic>-<user>`), as an OTN send is."""
        return Counter(
            str(c.recipient.get("id") or (c.token or "").rpartition("-")[2])
            for c in self.standin.calls_for(text)
        )


async def until(
    check: Callable[[], Awaitable[bool]],
    what: str,
    window: WindowProcess,
    latest: Callable[[], Any] = lambda: None,
    deadline_s: float = 2 * DEADLINE_S,
) -> None:
    """Poll until `check()` holds; fail at the deadline with what was last seen (never a sleep
    standing in for a wait)."""
    deadline = time.monotonic() + deadline_s
    while not await check():
        window.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {deadline_s:.0f} s; last: {latest()}")
        await asyncio.sleep(0.1)


async def read_progress(stack: Stack, broadcast_id: str) -> list[BroadcastProgress]:
    """Each partition's latest committed progress of the broadcast, read from the topic to its
    end (what the window has committed so far, with no reader's lag in between)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=None, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(stack.topics.broadcasts, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        latest: dict[bytes, BroadcastProgress] = {}
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    if record.key is not None and record.value is not None:
                        latest[record.key] = decode_progress(record.value)
        return [p for p in latest.values() if p.broadcast_id == broadcast_id]
    finally:
        await consumer.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(kafka_bootstrap: str, tmp_path_factory: Any) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("bc-e2e")
    prefix = unique_name("bce2e") + "."
    topics = await create_topics(kafka_bootstrap, prefix, PARTITIONS)
    window = window_worker(
        kafka_bootstrap,
        prefix,
        tmp,
        PARTITIONS,
        write_pages(tmp),
        WINDOW_BROADCAST_SLICE="1",
        WINDOW_FREEZE_AT_REQUEST=HOLD + frozen_recipient(),
    ).start()
    standin = GraphStandIn(TOKENS)
    await standin.start()
    service = DispatcherService(
        config(
            kafka_bootstrap,
            prefix,
            standin.base_url,
            partitions=PARTITIONS,
            role="all",
            window_url=window.url,
        ),
        rules(),
        host="127.0.0.1",
        page_tokens=TOKENS,
    )
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2 * DEADLINE_S))
    try:
        await window.wait_ready()
        await service.start()
        url = f"http://127.0.0.1:{service.port}"
        stack = Stack(kafka_bootstrap, topics, window, standin, url, http)
        await publish_events(kafka_bootstrap, topics.events, seed_events(now_ms()))
        for u in VIP:
            status, answer = await stack.call("PUT", f"/v1/pages/{PAGE_EU}/users/{u}/labels/vip")
            assert status == 200, answer
        await until_seeded(stack)
        yield stack
    finally:
        await http.close()
        await service.stop()
        await standin.stop()
        if window.proc is not None and window.alive:
            window.proc.send_signal(signal.SIGCONT)  # a test that failed while it was frozen
        await window.terminate()


async def until_seeded(stack: Stack) -> None:
    """Until the window has folded every seeded user (the last event of each: its label, else
    its tokens, else its message), read through the window's user query."""

    def folded(user_id: str, state: dict[str, Any]) -> bool:
        if user_id in VIP:
            return "vip" in state.get("labels", [])
        if user_id in HOLDERS:
            tokens = 1 if user_id in HOLDERS_EXPIRED else 2
            return len(state.get("otn", [])) == tokens and (
                user_id not in HOLDERS_OPEN or state.get("last_opener_at") is not None
            )
        return state.get("last_opener_at") is not None

    pending = set(EVERYONE)

    async def check() -> bool:
        for u in sorted(pending):
            status, body, _ = await stack.window.get(f"/v1/pages/{PAGE_EU}/users/{u}")
            if status == 200 and body.get("known") and folded(u, body["state"]):
                pending.discard(u)
        return not pending

    await until(check, "seeded state in the window", stack.window, lambda: sorted(pending))


def spec(broadcast_id: str, text: str, **kw: Any) -> dict[str, Any]:
    return {"broadcast_id": broadcast_id, "page_id": PAGE_EU, "message": {"text": text}, **kw}


def finished(expected_sent: int) -> Callable[[dict[str, Any]], bool]:
    """`done` on every partition, and every allowed recipient's delivery counted."""

    def check(view: dict[str, Any]) -> bool:
        counted = view["sent"] + view["failed"] + view["unknown"]
        return bool(view["status"] == "done" and counted >= expected_sent)

    return check


async def test_the_dry_run_counts_what_was_seeded(stack: Stack) -> None:
    otn = spec("e2e-dry-otn", "dry", purpose="otn", audience={"topic": TOPIC})
    status, dry = await stack.call("POST", "/v1/broadcasts", {**otn, "dry_run": True})
    assert status == 200, dry
    assert dry["dry_run"] is True and dry["complete"] is True, dry
    assert dry["audience"] == len(HOLDERS)
    assert dry["by_mechanism"] == {"OTN": len(HOLDERS_CLOSED) + len(HOLDERS_OPEN)}
    assert dry["refused"] == {"token_expired": len(HOLDERS_EXPIRED)}

    auto = {**otn, "purpose": "auto", "dry_run": True}  # the open window first: the token kept
    status, dry = await stack.call("POST", "/v1/broadcasts", auto)
    assert status == 200, dry
    assert dry["by_mechanism"] == {"OTN": len(HOLDERS_CLOSED), "RESPONSE": len(HOLDERS_OPEN)}
    assert dry["refused"] == {"token_expired": len(HOLDERS_EXPIRED)}

    vip = spec("e2e-dry-vip", "dry", audience={"labels_any": ["vip"]}, dry_run=True)
    status, dry = await stack.call("POST", "/v1/broadcasts", vip)
    assert status == 200, dry
    assert (dry["audience"], dry["by_mechanism"]) == (len(VIP), {"RESPONSE": len(VIP_OPEN)})
    assert dry["refused"] == {"window_closed": len(VIP_CLOSED)}

    status, view = await stack.call("GET", "/v1/broadcasts/e2e-dry-otn")
    assert status == 404, view  # a dry run creates nothing
    assert not stack.standin.calls


async def test_a_broadcast_to_the_topics_holders_messages_each_once(stack: Stack) -> None:
    text = "Your size is back in stock (e2e-restock)"
    body = spec("e2e-restock", text, purpose="otn", audience={"topic": TOPIC})
    status, created = await stack.call("POST", "/v1/broadcasts", body)
    assert status == 202, created
    assert created["created"] is True and created["status_url"] == "/v1/broadcasts/e2e-restock"

    allowed = HOLDERS_CLOSED + HOLDERS_OPEN
    view = await stack.until_status("e2e-restock", finished(len(allowed)), "done, all sent")
    assert (view["audience"], view["decided"]) == (len(HOLDERS), len(HOLDERS))
    assert view["by_mechanism"] == {"OTN": len(allowed)}
    assert view["refused"] == {"token_expired": len(HOLDERS_EXPIRED)}
    assert (view["sent"], view["failed"], view["unknown"]) == (len(allowed), 0, 0)
    assert view["partitions"] == {"total": 2, "reported": 2, "by_status": {"done": 2}}
    assert view["finished_at"] >= view["started_at"] >= view["created_at"]

    calls = stack.calls_for(text)
    assert calls == Counter(dict.fromkeys(allowed, 1))  # one call per recipient, nobody else
    tokens = Counter(c.token for c in stack.standin.calls_for(text))
    assert tokens == Counter({token_of(u, TOPIC): 1 for u in allowed})
    assert stack.standin.double_used_tokens() == {}

    rid = recipient_request_id("e2e-restock", HOLDERS_OPEN[0])
    status, decision = await stack.call("GET", f"/v1/decisions/{rid}")
    assert status == 200, decision
    assert (decision["allowed"], decision["mechanism"]) == (True, "OTN")
    assert decision["delivery"]["status"] == "sent"
    rid = recipient_request_id("e2e-restock", HOLDERS_EXPIRED[0])
    status, decision = await stack.call("GET", f"/v1/decisions/{rid}")
    assert (status, decision["allowed"], decision["reason"]) == (200, False, "token_expired")

    status, again = await stack.call("POST", "/v1/broadcasts", body)  # the same spec again
    assert (status, again["created"], again["status"]) == (200, False, "done")
    status, other = await stack.call("POST", "/v1/broadcasts", {**body, "message": {"text": "x"}})
    assert (status, other["error"], other["field"]) == (409, "conflict", "message")

    # A later broadcast to the same list, done: had the resubmission started a second fan-out
    # (commands are read in order by each partition), its calls would be in by now.
    later = spec("e2e-restock-2", "(e2e-restock-2)", purpose="otn", audience={"topic": TOPIC})
    status, created = await stack.call("POST", "/v1/broadcasts", later)
    assert status == 202, created
    view = await stack.until_status("e2e-restock-2", finished(0), "done")
    assert view["by_mechanism"] == {}, view  # every token was spent by the first one
    assert view["refused"] == {"token_expired": len(HOLDERS_EXPIRED)}, view
    assert stack.calls_for(text) == calls
    assert not stack.calls_for("(e2e-restock-2)")


async def test_purpose_auto_to_a_topic_uses_the_open_window_and_keeps_the_token(
    stack: Stack,
) -> None:
    text = "Prices dropped (e2e-auto-topic)"
    body = spec("e2e-auto-topic", text, audience={"topic": SECOND_TOPIC})  # purpose: auto
    status, created = await stack.call("POST", "/v1/broadcasts", body)
    assert status == 202, created
    holders = HOLDERS_CLOSED + HOLDERS_OPEN
    view = await stack.until_status("e2e-auto-topic", finished(len(holders)), "done, all sent")
    assert view["by_mechanism"] == {"OTN": len(HOLDERS_CLOSED), "RESPONSE": len(HOLDERS_OPEN)}
    assert stack.calls_for(text) == Counter(dict.fromkeys(holders, 1))
    tokens = {c.token for c in stack.standin.calls_for(text)}
    assert tokens == {token_of(u, SECOND_TOPIC) for u in HOLDERS_CLOSED} | {None}

    for u in (HOLDERS_OPEN[0], HOLDERS_CLOSED[0]):  # the window's state: kept, and spent
        status, user_view, _ = await stack.window.get(f"/v1/pages/{PAGE_EU}/users/{u}")
        assert status == 200, user_view
        [token] = [t for t in user_view["state"]["otn"] if t["topic"] == SECOND_TOPIC]
        kept = u in HOLDERS_OPEN
        assert (token["status"] == "available") is kept, token


async def test_a_broadcast_to_a_label_with_purpose_auto(stack: Stack) -> None:
    text = "A tasting for our VIPs on Friday (e2e-vip)"
    body = spec("e2e-vip", text, audience={"labels_any": ["vip"]})  # purpose: auto by default
    status, created = await stack.call("POST", "/v1/broadcasts", body)
    assert status == 202, created

    view = await stack.until_status("e2e-vip", finished(len(VIP_OPEN)), "done, all sent")
    assert view["purpose"] == "auto"
    assert (view["audience"], view["decided"], view["sent"]) == (
        len(VIP),
        len(VIP),
        len(VIP_OPEN),
    )
    assert view["by_mechanism"] == {"RESPONSE": len(VIP_OPEN)}
    assert view["refused"] == {"window_closed": len(VIP_CLOSED)}
    assert stack.calls_for(text) == Counter(dict.fromkeys(VIP_OPEN, 1))
    calls = stack.standin.calls_for(text)
    assert {c.body.get("messaging_type") for c in calls} == {"RESPONSE"}

    # Meta's delivery and read webhooks: each recipient counted once, only for what was sent (a
    # watermark before the send, a second read, or a user who was refused, counts nothing).
    now = now_ms()
    counted, early, refused_user = VIP_OPEN[:3], VIP_OPEN[3], VIP_CLOSED[0]

    def delivered(u: str, watermark: int) -> Event:
        return MessageDelivered(page_id=PAGE_EU, user_id=u, timestamp=now, watermark=watermark)

    def read(u: str) -> Event:
        return MessageRead(page_id=PAGE_EU, user_id=u, timestamp=now, watermark=now)

    receipts = [delivered(early, now - 2 * HOUR), read(refused_user), read(counted[0])]
    receipts += [read(counted[0]), delivered(counted[1], now), delivered(counted[2], now)]
    receipts += [read(counted[2])]
    await publish_events(stack.bootstrap, stack.topics.events, receipts)
    # A label after them on every partition: once the window shows it, the receipts before it
    # in the same partition are folded and counted (the counts commit with the states).
    markers = {partition_for(key(u), PARTITIONS): u for u in WRITERS}
    assert len(markers) == PARTITIONS
    for u in markers.values():
        status, answer = await stack.call("PUT", f"/v1/pages/{PAGE_EU}/users/{u}/labels/marked")
        assert status == 200, answer
        await stack.until_labels(u, ["marked"])
    parts = await read_progress(stack, "e2e-vip")
    assert sum(p.delivered for p in parts) == 3  # counted[0] by its read (read: delivered)
    assert sum(p.read for p in parts) == 2
    view = await stack.until_status("e2e-vip", lambda v: v["read"] == 2, "the reads counted")
    assert view["delivered"] == 3

    status, listing = await stack.call("GET", f"/v1/broadcasts?page_id={PAGE_EU}")
    assert status == 200
    assert {"e2e-vip", "e2e-restock"} <= {b["broadcast_id"] for b in listing["broadcasts"]}


async def test_a_pause_right_after_create_holds_the_fan_out_and_a_resume_finishes_it(
    stack: Stack,
) -> None:
    text = "Everyone who wrote lately (e2e-paused)"
    body = spec(PAUSED_ID, text, audience={"labels_none": ["staff"]})  # the whole page
    status, created = await stack.call("POST", "/v1/broadcasts", body)
    assert status == 202, created

    async def frozen() -> bool:
        return _stopped(stack.window)

    await until(frozen, "window frozen mid-fan-out", stack.window)
    status, paused = await stack.call("POST", f"/v1/broadcasts/{PAUSED_ID}/pause")
    assert (status, paused["command"], paused["partitions"]) == (202, "pause", PARTITIONS)
    assert stack.window.proc is not None
    stack.window.proc.send_signal(signal.SIGCONT)

    view = await stack.until_status(PAUSED_ID, lambda v: v["status"] == "paused", "paused")
    assert view["decided"] < len(EVERYONE), view  # paused mid-way, not after the end
    assert view["partitions"]["by_status"].get("paused", 0) >= 1

    status, resumed = await stack.call("POST", f"/v1/broadcasts/{PAUSED_ID}/resume")
    assert status == 202, resumed
    view = await stack.until_status(PAUSED_ID, finished(len(WINDOW_OPEN)), "done, all sent")
    assert (view["audience"], view["decided"]) == (len(EVERYONE), len(EVERYONE))
    assert view["by_mechanism"] == {"RESPONSE": len(WINDOW_OPEN)}
    assert view["refused"] == {"window_closed": len(EVERYONE) - len(WINDOW_OPEN)}
    assert stack.calls_for(text) == Counter(dict.fromkeys(WINDOW_OPEN, 1))
    assert stack.calls_for(text)[frozen_recipient()] == 1  # frozen mid-slice, sent once


async def test_a_cancel_mid_fan_out_answers_with_final_counts(stack: Stack) -> None:
    text = "Cancelled mid-way (cancel.hold)"
    body = spec(CANCELLED_ID, text, audience={"labels_none": ["staff"]})  # the whole page
    status, created = await stack.call("POST", "/v1/broadcasts", body)
    assert status == 202, created

    async def frozen() -> bool:
        return _stopped(stack.window)

    await until(frozen, "window frozen mid-fan-out", stack.window)
    cancel = asyncio.create_task(stack.call("DELETE", f"/v1/broadcasts/{CANCELLED_ID}"))
    assert stack.window.proc is not None
    stack.window.proc.send_signal(signal.SIGCONT)
    status, cancelled = await cancel
    assert (status, cancelled["command"], cancelled["confirmed"]) == (202, "cancel", True)
    assert cancelled["status"] == "cancelled", cancelled
    decided = cancelled["decided"]
    assert 0 < decided < len(EVERYONE), cancelled  # mid-way: some decided, most never

    view = await stack.status(CANCELLED_ID)
    allowed = view["by_mechanism"].get("RESPONSE", 0)
    view = await stack.until_status(
        CANCELLED_ID,
        lambda v: v["sent"] + v["failed"] + v["unknown"] >= allowed,
        "the deliveries of what was decided before the cancel",
    )
    assert (view["status"], view["decided"]) == ("cancelled", decided)  # nothing after it
    calls = stack.calls_for(text)
    assert sum(calls.values()) == allowed and set(calls.values()) == {1}
    status, refused = await stack.call("POST", f"/v1/broadcasts/{CANCELLED_ID}/resume")
    assert (status, refused["error"]) == (409, "conflict")


async def test_a_scheduled_broadcast_cancelled_decides_nobody(stack: Stack) -> None:
    later = ms_to_iso(now_ms() + HOUR)
    text = "Scheduled, then cancelled (e2e-cancel)"
    body = spec("e2e-cancel", text, audience={"users": WRITERS}, not_before=later)
    status, created = await stack.call("POST", "/v1/broadcasts", body)
    assert (status, created["status"], created["not_before"]) == (202, "scheduled", later)

    status, cancelled = await stack.call("DELETE", "/v1/broadcasts/e2e-cancel")
    assert (status, cancelled["confirmed"], cancelled["decided"]) == (202, True, 0)
    view = await stack.status("e2e-cancel")
    assert view["partitions"]["by_status"] == {"cancelled": PARTITIONS}
    assert (view["status"], view["decided"], view["sent"]) == ("cancelled", 0, 0)
    assert view["finished_at"] is not None
    assert not stack.calls_for(text)

    status, missing = await stack.call("DELETE", "/v1/broadcasts/e2e-never")
    assert (status, missing["error"]) == (404, "not_found")
