"""The window worker on the real broker, as subprocesses (`python -m services.window worker`).

- events in, state out through the query endpoint; reach counts; a request decided;
- a restart keeps the state (restored from the changelog), whatever its data dir holds;
- the replay rebuilds the same table from the events topic and finds a planted divergence;
- a second worker joins and the state moves with its partitions (queries routed to the owner);
- kill -9 of the owner between two requests for one OTN token: the survivor takes over, the
  token goes to exactly one of them, and no state is lost;
- a worker frozen mid-batch past its session timeout (SIGSTOP) wakes up fenced: nothing it
  decided before the freeze is ever read, and the state its successor wrote stays (I1).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devtools.devbroker import free_port, unique_name
from devtools.window_harness import REPO_ROOT, WindowProcess
from schemas.decision import Decision, decode_decision_record
from schemas.events import Event, MessageReceived, OtnOptin, PolicyEnforcement, encode_event
from schemas.request import SendRequest, encode_request
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.common.topics import ensure_topics
from services.window.config import changelog_topic
from services.window.processing import partition_for
from services.window.store import StoredUser, decode_stored_user, encode_stored_user
from windowgate.core.timeconst import HOUR_MS

pytestmark = pytest.mark.integration

PARTITIONS = 4
PAGE = "682498171943165"
DEADLINE_S = 60.0
FAST = {"WINDOW_SESSION_TIMEOUT_S": "6", "WINDOW_REACH_FLUSH_S": "0.2"}


class Gateway:
    """One test's topics (fresh prefix), its workers, and a producer to feed them."""

    def __init__(self, bootstrap: str, tmp: Path, name: str) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.prefix = f"{unique_name(name)}."
        self.topics = Topics(self.prefix)
        self.workers: list[WindowProcess] = []
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")

    async def start(self) -> None:
        await ensure_topics(self.bootstrap, self.topics, PARTITIONS)
        await self.producer.start()

    def worker(
        self, name: str, data: str | None = None, env: dict[str, str] | None = None
    ) -> WindowProcess:
        process = WindowProcess(
            self.bootstrap,
            prefix=self.prefix,
            port=free_port(),
            data_dir=self.tmp / (data or name),
            log=self.tmp / f"{name}.log",
            partitions=PARTITIONS,
            extra_env={**FAST, **(env or {})},
        )
        self.workers.append(process)
        return process.start()

    async def send_events(self, events: Iterable[Event]) -> None:
        for event in events:
            await self.producer.send(
                self.topics.events, key=event.key.encode(), value=encode_event(event)
            )
        await self.producer.flush()

    async def send_request(self, request: SendRequest) -> None:
        await self.producer.send_and_wait(
            self.topics.send_requests, key=request.key.encode(), value=encode_request(request)
        )

    async def close(self) -> None:
        await self.producer.stop()
        await asyncio.gather(*(w.terminate() for w in self.workers))


@pytest.fixture
async def gateway(
    kafka_bootstrap: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Gateway]:
    gateway = Gateway(kafka_bootstrap, tmp_path, request.node.name[:30])
    await gateway.start()
    yield gateway
    await gateway.close()


def user(n: int) -> str:
    return str(1_000_000_000_000_000 + n * 7_919)


def opener_and_token(n: int, now: int) -> list[Event]:
    """User n wrote an hour ago and opted in to one OTN token for "restock"."""
    return [
        MessageReceived(
            page_id=PAGE, user_id=user(n), timestamp=now - HOUR_MS, mid=f"m-{n}", dedup_key=f"m-{n}"
        ),
        OtnOptin(
            page_id=PAGE,
            user_id=user(n),
            timestamp=now - HOUR_MS + 1,
            token=f"tok-{n}",
            topic="restock",
        ),
    ]


class NotYet(Exception):
    """A polled condition does not hold yet; the message says what was seen."""


async def eventually(
    check: Callable[[], Any],
    what: str,
    workers: Iterable[WindowProcess],
    timeout_s: float = DEADLINE_S,
) -> Any:
    """Poll `check` (async, returns a truthy result or None) until it holds; fail with context."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        for worker in workers:
            worker.check_alive()
        try:
            last = await check()
        except Exception as exc:  # a worker mid-restart refuses connections: poll on
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what}: not after {timeout_s} s (last: {last!r})\n{await _report(workers)}"
            )
        await asyncio.sleep(0.25)


async def _report(workers: Iterable[WindowProcess]) -> str:
    """Each worker's counters and last log lines, for a failure message."""
    parts = []
    for worker in workers:
        try:
            metrics = (await worker.get("/metrics"))[1]
        except Exception as exc:
            metrics = repr(exc)
        lines = [line for line in str(metrics).splitlines() if line.startswith("window_records_t")]
        parts.append(
            f"--- {worker.url} ({worker.log}):\n" + "\n".join(lines) + "\n" + worker.tail()
        )
    return "\n".join(parts)


async def user_state(worker: WindowProcess, n: int) -> tuple[dict[str, Any], str] | None:
    status, body, headers = await worker.get(f"/v1/pages/{PAGE}/users/{user(n)}")
    if status != 200 or not body["known"]:
        return None
    return body, headers.get("X-Windowgate-Served-By", "")


async def all_users_known(worker: WindowProcess, users: range) -> dict[int, dict[str, Any]] | None:
    """Every user's view, once both of its events (`opener_and_token`) are folded."""
    found = {}
    for n in users:
        answer = await user_state(worker, n)
        if answer is None or not answer[0]["state"]["otn"]:
            return None
        found[n] = answer[0]
    return found


async def read_decisions(bootstrap: str, topic: str) -> list[Decision]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        decisions = []
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                for message in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    decisions.append(decode_decision_record(message.value or b"").decision)
        return decisions
    finally:
        await consumer.stop()


async def decisions_for(gateway: Gateway, *request_ids: str) -> list[Decision] | None:
    decisions = await read_decisions(gateway.bootstrap, gateway.topics.decisions)
    mine = [d for d in decisions if d.request_id in request_ids]
    return mine if {d.request_id for d in mine} == set(request_ids) else None


async def run_replay(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "services.window", "replay", "--bootstrap", gateway.bootstrap,
        "--prefix", gateway.prefix, "--partitions", str(PARTITIONS), "--quiet", *args,
    ]  # fmt: skip
    return await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


async def test_one_worker_folds_answers_survives_restarts_and_replays(gateway: Gateway) -> None:
    now = now_ms()
    users = range(12)
    w1 = gateway.worker("w1")
    await w1.wait_ready()
    await gateway.send_events(e for n in users for e in opener_and_token(n, now))

    states = await eventually(lambda: all_users_known(w1, users), "all users visible", [w1])
    first = states[0]["state"]
    assert first["last_opener_at"] == now - HOUR_MS
    assert [t["token"] for t in first["otn"]] == ["tok-0"]
    window = next(m for m in states[0]["mechanisms"] if m["mechanism"] == "RESPONSE")
    assert window["usable"] is True and window["until_ms"] == now - HOUR_MS + 24 * HOUR_MS

    async def reach_complete() -> dict[str, Any] | None:
        status, body, _ = await w1.get(f"/v1/pages/{PAGE}/reach")
        counted = status == 200 and body["complete"] and body["users"] == len(users)
        return body if counted and body["otn_topics"] else None

    reach = await eventually(reach_complete, "reach counts", [w1])
    assert reach["reachable_now"]["RESPONSE"] == len(users)
    assert reach["otn_topics"]["restock"] == {"users": len(users), "tokens": len(users)}

    await gateway.send_request(
        SendRequest(
            request_id="r-1",
            page_id=PAGE,
            user_id=user(3),
            purpose="otn",
            topic="restock",
            message={"text": "back in stock"},
        )
    )
    [decision] = await eventually(lambda: decisions_for(gateway, "r-1"), "decision r-1", [w1])
    assert (decision.allowed, decision.token) == (True, "tok-3")
    reserved = await eventually(
        lambda: _token_status(w1, 3, "reserved"), "the reservation visible", [w1]
    )
    before = {n: s["state"] for n, s in (await all_users_known(w1, users) or {}).items()}
    assert before[3] == reserved

    # Restart on the same data dir.
    await w1.terminate()
    w1 = gateway.worker("w1-again", data="w1")
    await w1.wait_ready()
    after = await eventually(lambda: all_users_known(w1, users), "state after restart", [w1])
    assert {n: s["state"] for n, s in after.items()} == before

    # Another data dir: the state comes from the changelog, never from local files.
    await w1.terminate()
    w1 = gateway.worker("w1-fresh", data="w1-empty")
    await w1.wait_ready()
    after = await eventually(lambda: all_users_known(w1, users), "state from changelog", [w1])
    assert {n: s["state"] for n, s in after.items()} == before
    await w1.terminate()

    # The events topic alone rebuilds the same table (I8) ...
    replay = await run_replay(gateway)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"{len(users)} users" in replay.stdout
    assert "no differences" in replay.stdout
    # ... and a planted divergence in the live table is found, field by field.
    key = f"{PAGE}:{user(5)}".encode()
    live = decode_stored_user(await _live_value(gateway, key))
    planted = StoredUser(replace(live.state, last_opener_at=now), live.request_offset)
    await gateway.producer.send_and_wait(
        changelog_topic(f"{gateway.prefix}window", "users"),
        key=key,
        value=encode_stored_user(planted),
        partition=partition_for(key, PARTITIONS),
    )
    replay = await run_replay(gateway, "--show", "3")
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert f"differs: {PAGE}:{user(5)}" in replay.stdout
    assert "last_opener_at: live=" in replay.stdout


async def _token_status(worker: WindowProcess, n: int, status: str) -> dict[str, Any] | None:
    answer = await user_state(worker, n)
    if answer is None or [t["status"] for t in answer[0]["state"]["otn"]] != [status]:
        return None
    return answer[0]["state"]


async def _live_value(gateway: Gateway, key: bytes) -> bytes:
    topic = changelog_topic(f"{gateway.prefix}window", "users")
    consumer = AIOKafkaConsumer(bootstrap_servers=gateway.bootstrap, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition_for(key, PARTITIONS))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        value = b""
        while await consumer.position(tp) < end:
            for message in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                if message.key == key and message.value is not None:
                    value = message.value
        return value
    finally:
        await consumer.stop()


async def test_a_second_worker_takes_partitions_and_a_kill_loses_nothing(gateway: Gateway) -> None:
    now = now_ms()
    users = range(16)
    w1 = gateway.worker("w1")
    await w1.wait_ready()
    await gateway.send_events(e for n in users for e in opener_and_token(n, now))
    before = await eventually(lambda: all_users_known(w1, users), "users on w1", [w1])

    # A second worker joins: some partitions (and their users' state) move to it.
    w2 = gateway.worker("w2")
    await w2.wait_ready()

    async def split() -> dict[int, str] | None:
        owners = {}
        for n in users:
            status, body, headers = await w1.get(f"/v1/pages/{PAGE}/users/{user(n)}")
            if status != 200 or body["state"] != before[n]["state"]:
                raise NotYet(f"user {n}: {status} {body}, was {before[n]['state']}")
            owners[n] = headers.get("X-Windowgate-Served-By", "")
        if set(owners.values()) != {w1.url, w2.url}:
            raise NotYet(f"owners: {owners}")
        return owners

    owners = await eventually(split, "state served by both workers", [w1, w2])
    for n in users:  # either worker answers for any user, from the owner's table
        answer = await user_state(w2, n)
        assert answer is not None and answer[0]["state"] == before[n]["state"]
        assert answer[1] == owners[n]

    await _a_page_block_reaches_the_other_worker(gateway, {w1.url: w1, w2.url: w2})

    # Two requests for the one token of a user owned by w2; w2 is killed between them.
    victim = next(n for n in users if owners[n] == w2.url)
    ask = {
        "purpose": "otn",
        "topic": "restock",
        "page_id": PAGE,
        "user_id": user(victim),
        "message": {"text": "back in stock"},
    }
    await gateway.send_request(SendRequest(request_id="before-kill", **ask))
    await eventually(lambda: decisions_for(gateway, "before-kill"), "first decision", [w1, w2])
    w2.kill()
    await gateway.send_request(SendRequest(request_id="after-kill", **ask))

    decided = await eventually(
        lambda: decisions_for(gateway, "before-kill", "after-kill"), "both decided", [w1], 90
    )
    # At least once: a redelivered request re-emits its decision exactly as first decided (the
    # dispatcher keeps one per request_id); what must hold is who got the token.
    grants = {d.request_id for d in decided if d.allowed and d.token == f"tok-{victim}"}
    assert grants == {"before-kill"}, decided
    first = {(d.allowed, d.reason, d.token) for d in decided if d.request_id == "before-kill"}
    assert first == {(True, "otn_token", f"tok-{victim}")}, decided
    later = {(d.allowed, d.reason, d.decided_at) for d in decided if d.request_id == "after-kill"}
    assert len(later) == 1, decided
    assert next(iter(later))[:2] == (False, "token_spent")

    # The survivor owns everything now, with every user's state intact.
    async def all_on_w1() -> dict[int, dict[str, Any]] | None:
        states = {}
        for n in users:
            answer = await user_state(w1, n)
            if answer is None or answer[1] != w1.url:
                return None
            states[n] = answer[0]["state"]
        return states

    after = await eventually(all_on_w1, "the survivor serves every user", [w1], 90)
    for n in users:
        if n != victim:
            assert after[n] == before[n]["state"]
    assert [(t["status"], t["request_id"]) for t in after[victim]["otn"]] == [
        ("reserved", "before-kill")
    ]
    assert sorted(d["request_id"] for d in after[victim]["decisions"]) == [
        "after-kill",
        "before-kill",
    ]


async def _a_page_block_reaches_the_other_worker(
    gateway: Gateway, workers: dict[str, WindowProcess]
) -> None:
    """A page block folds where the page's key lives, but refuses requests in every partition:
    the pages GlobalTable carries it to the other worker (after a replication delay)."""
    page = "542998526103632"
    page_partition = partition_for(f"{page}:".encode(), PARTITIONS)
    owners = {}  # partition -> the worker that serves it, from the served-by header
    for n in range(200):
        status, _, headers = await next(iter(workers.values())).get(
            f"/v1/pages/{page}/users/{user(n)}"
        )
        assert status == 200
        owners[partition_for(f"{page}:{user(n)}".encode(), PARTITIONS)] = (
            n,
            headers["X-Windowgate-Served-By"],
        )
        if len(owners) == PARTITIONS:
            break
    writer = owners[page_partition][1]
    n, reader = next(owner for owner in owners.values() if owner[1] != writer)
    await gateway.send_events(
        [PolicyEnforcement(page_id=page, user_id="", timestamp=now_ms(), action="block")]
    )

    async def seen_by_reader() -> bool:
        status, body, _ = await workers[reader].get(f"/v1/pages/{page}/users/{user(n)}")
        return status == 200 and bool(body["page"]) and body["page"]["restricted"]

    await eventually(seen_by_reader, "the block on the other worker", workers.values())
    request = SendRequest(request_id="blocked-page", page_id=page, user_id=user(n))
    await gateway.send_request(request)
    [decision] = await eventually(
        lambda: decisions_for(gateway, "blocked-page"), "the blocked decision", workers.values()
    )
    assert (decision.allowed, decision.reason) == (False, "page_restricted")


def _stopped(worker: WindowProcess) -> bool:
    """The process is stopped by a signal (state T in /proc): the freeze hook has fired."""
    assert worker.proc is not None
    stat = Path(f"/proc/{worker.proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


async def test_a_worker_frozen_mid_batch_wakes_up_fenced_and_writes_nothing(
    gateway: Gateway,
) -> None:
    now = now_ms()
    users = range(6)
    w1 = gateway.worker("w1", env={"WINDOW_FREEZE_AT_REQUEST": "frozen"})
    await w1.wait_ready()
    await gateway.send_events(e for n in users for e in opener_and_token(n, now))
    await eventually(lambda: all_users_known(w1, users), "users on w1", [w1])

    # w1 decides "frozen" (granting tok-0) and stops before its transaction, as in a long GC pause.
    ask = {
        "purpose": "otn",
        "topic": "restock",
        "page_id": PAGE,
        "user_id": user(0),
        "message": {"text": "back in stock"},
    }
    await gateway.send_request(SendRequest(request_id="frozen", **ask))

    async def frozen() -> bool:
        return _stopped(w1)

    await eventually(frozen, "w1 frozen by its hook", [w1])

    # w2 takes every partition once w1's session has expired, and carries on.
    w2 = gateway.worker("w2")
    decided = await eventually(lambda: decisions_for(gateway, "frozen"), "w2 decides", [w2], 90)
    assert [(d.allowed, d.token) for d in decided] == [(True, "tok-0")]
    await gateway.send_request(SendRequest(request_id="after", **ask))
    later = MessageReceived(
        page_id=PAGE, user_id=user(1), timestamp=now, mid="m-late", dedup_key="m-late"
    )
    await gateway.send_events([later])
    await eventually(lambda: decisions_for(gateway, "after"), "w2 decides again", [w2], 60)

    async def late_message_folded() -> bool:
        answer = await user_state(w2, 1)
        return answer is not None and answer[0]["state"]["last_opener_at"] == now

    await eventually(late_message_folded, "the late message on w2", [w2])

    # w1 wakes up holding its stale batch: its transaction is fenced, it rejoins and restores.
    assert w1.proc is not None
    w1.proc.send_signal(signal.SIGCONT)

    async def both_serving() -> set[str] | None:
        served = set()
        for n in users:
            answer = await user_state(w2, n)
            if answer is None:
                return None
            served.add(answer[1])
        return served if served == {w1.url, w2.url} else None

    await eventually(both_serving, "w1 back, partitions split", [w1, w2], 90)
    decisions = await read_decisions(gateway.bootstrap, gateway.topics.decisions)
    frozen_records = [d for d in decisions if d.request_id == "frozen"]
    assert frozen_records == decided  # one record: w1's stale decision was never committed
    after = [(d.allowed, d.reason) for d in decisions if d.request_id == "after"]
    assert after == [(False, "token_spent")]
    for worker in (w1, w2):
        answer = await user_state(worker, 0)
        assert answer is not None
        state = answer[0]["state"]
        assert [(t["status"], t["request_id"]) for t in state["otn"]] == [("reserved", "frozen")]
        assert sorted(d["request_id"] for d in state["decisions"]) == ["after", "frozen"]
        answer = await user_state(worker, 1)
        assert answer is not None and answer[0]["state"]["last_opener_at"] == now
    replay = await run_replay(gateway)
    assert replay.returncode == 0, replay.stdout + replay.stderr
