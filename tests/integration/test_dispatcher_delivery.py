"""The dispatcher against a real broker and the Graph stand-in: every mechanism's call, every kind
of answer folded back, duplicates, retries, a timeout, and two instances sharing the work.

Decisions are produced to `decisions` as the window worker would (built with `decide` over states
folded here); what the dispatcher did is read back from the stand-in's call log, the events topic
and the dispatch log.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devtools.devbroker import unique_name
from devtools.graph_standin import GraphStandIn
from schemas.decision import DecisionRecord
from schemas.events import (
    PageRestricted,
    SendOutcome,
    TokenOptedOut,
    TokenOutcomeUnknown,
    TokenReleased,
    TokenSpent,
    UserUnavailable,
    WindowClosedByMeta,
)
from schemas.state import PageState
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.dispatcher.delivery.dispatchlog import Done
from services.dispatcher.service import DispatcherService
from tests.integration.dispatcher_kit import (
    HOUR,
    PAGE_EU,
    PAGE_US,
    TOKENS,
    Collector,
    User,
    config,
    create_topics,
    produce,
    rules,
    until,
)
from windowgate.core.fold import fold_page

BOOK = rules()


@dataclass
class Env:
    bootstrap: str
    topics: Topics
    standin: GraphStandIn
    collector: Collector
    service: DispatcherService

    async def send(self, *records: DecisionRecord) -> None:
        await produce(self.bootstrap, self.topics.decisions, records)


@contextlib.asynccontextmanager
async def running(kafka_bootstrap: str, **settings: Any) -> AsyncIterator[Env]:
    """A dispatcher worker on fresh topics, with the kit's configuration changed by `settings`."""
    standin = GraphStandIn(TOKENS)
    await standin.start()
    prefix = unique_name("dispatch") + "."
    topics = await create_topics(kafka_bootstrap, prefix, 2)
    collector = Collector(kafka_bootstrap, topics)
    await collector.start()
    service = DispatcherService(
        config(kafka_bootstrap, prefix, standin.base_url, role="worker", **settings),
        BOOK,
        host="127.0.0.1",
        page_tokens=TOKENS,
    )
    await service.start()
    try:
        yield Env(kafka_bootstrap, topics, standin, collector, service)
    finally:
        await service.stop()
        await collector.stop()
        await standin.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(kafka_bootstrap: str) -> AsyncIterator[Env]:
    async with running(kafka_bootstrap) as started:
        yield started


def uid(name: str) -> str:
    return unique_name(name)


async def test_every_mechanism_goes_out_with_its_own_body(env: Env) -> None:
    eu = User(PAGE_EU, uid("u")).wrote().opted_in("otn-all").subscribed("rn-all")
    us = User(PAGE_US, uid("u")).wrote().subscribed("mm-all", "spring-sale")
    template = {"template": {"name": "order_shipped_v2"}}
    records = {
        "RESPONSE": eu.decide(uid("r"), BOOK, purpose="response"),
        "UPDATE": eu.decide(uid("r"), BOOK, purpose="update"),
        "HUMAN_AGENT": eu.decide(uid("r"), BOOK, purpose="human_agent", human_author="ana"),
        "MESSAGE_TAG": eu.decide(uid("r"), BOOK, purpose="tag", tag="CUSTOMER_FEEDBACK"),
        "UTILITY": eu.decide(uid("r"), BOOK, purpose="utility", message=template),
        "OTN": eu.decide(uid("r"), BOOK, purpose="otn", topic="restock"),
        "RECURRING": eu.decide(uid("r"), BOOK, purpose="recurring", topic="weekly-deals"),
        "MARKETING": us.decide(
            uid("r"), BOOK, purpose="marketing", message={"message_id": "campaign-1"}
        ),
    }
    for mechanism, record in records.items():
        assert record.decision.allowed, (mechanism, record.decision.detail)
        assert record.decision.mechanism == mechanism
    await env.send(*records.values())
    for record in records.values():
        done = await env.collector.outcome(record.decision.request_id)
        assert done.status == "sent", done
    calls = {}
    for mechanism, record in records.items():
        message_id = env.collector.done[record.decision.request_id][0].message_id
        calls[mechanism] = next(
            c for c in env.standin.calls if c.answer and c.answer.get("message_id") == message_id
        )
    bodies = {mechanism: call.body for mechanism, call in calls.items()}
    assert bodies["RESPONSE"]["messaging_type"] == "RESPONSE"
    assert bodies["UPDATE"]["messaging_type"] == "UPDATE"
    assert (bodies["HUMAN_AGENT"]["messaging_type"], bodies["HUMAN_AGENT"]["tag"]) == (
        "MESSAGE_TAG",
        "HUMAN_AGENT",
    )
    assert bodies["MESSAGE_TAG"]["tag"] == "CUSTOMER_FEEDBACK"
    assert bodies["UTILITY"] == {
        "recipient": {"id": eu.user_id},
        "messaging_type": "UTILITY",
        "message": template,
    }
    assert bodies["OTN"]["recipient"] == {"one_time_notif_token": "otn-all"}
    assert "messaging_type" not in bodies["OTN"]
    assert bodies["RECURRING"]["recipient"] == {"notification_messages_token": "rn-all"}
    assert bodies["MARKETING"] == {
        "message_id": "campaign-1",
        "messenger_delivery_data": {"subscription_token": "mm-all"},
    }
    assert calls["MARKETING"].path == "/v25.0/act_1234567890/messages"
    assert calls["RESPONSE"].path == f"/v25.0/{PAGE_EU}/messages"
    otn_events = env.collector.events_of(records["OTN"].decision.request_id)
    assert {type(e) for e in otn_events} == {SendOutcome, TokenSpent}


async def test_refused_duplicate_and_repeated_decisions_are_sent_once(env: Env) -> None:
    user = User(PAGE_EU, uid("u")).wrote()
    allowed = user.decide(uid("r"), BOOK)
    refused = User(PAGE_EU, uid("u")).decide(uid("r"), BOOK)  # never wrote: window closed
    assert not refused.decision.allowed
    flagged = replace(allowed, decision=allowed.decision.as_duplicate())
    marker = User(PAGE_EU, uid("u")).wrote().decide(uid("r"), BOOK)
    await env.send(allowed, allowed, refused, flagged, allowed, marker)
    await env.collector.outcome(marker.decision.request_id)  # everything before it is handled
    rid = allowed.decision.request_id
    assert len(env.standin.calls_for(f"hello {rid}")) == 1
    assert env.standin.calls_for(f"hello {refused.decision.request_id}") == []
    assert len(env.collector.done[rid]) == 1
    assert refused.decision.request_id not in env.collector.done


async def test_graph_errors_fold_back_into_the_users_state(env: Env) -> None:
    closed = User(PAGE_EU, uid("u")).wrote()
    gone = User(PAGE_EU, uid("u")).wrote()
    stopped = User(PAGE_EU, uid("u")).opted_in("otn-stopped")
    restricted = User(PAGE_US, uid("u")).wrote()
    env.standin.script("error-outside-window", recipient=closed.user_id)
    env.standin.script("error-person-unavailable", recipient=gone.user_id)
    env.standin.script(
        (400, {"error": {"message": "stopped", "code": 10, "error_subcode": 1893015}}),
        recipient="otn-stopped",
    )
    env.standin.script(
        (400, {"error": {"message": "restricted", "code": 10, "error_subcode": 1893063}}),
        recipient=restricted.user_id,
    )
    otn: dict[str, Any] = {"purpose": "otn", "topic": "restock"}
    cases: list[tuple[User, dict[str, Any], type, str]] = [
        (closed, {}, WindowClosedByMeta, "window_closed"),
        (gone, {}, UserUnavailable, "user_unavailable"),
        (stopped, otn, TokenOptedOut, "token_spent"),
    ]
    records = [user.decide(uid("r"), BOOK, **ask) for user, ask, _, _ in cases]
    page_case = restricted.decide(uid("r"), BOOK)
    await env.send(*records, page_case)
    for (user, ask, fact, reason), record in zip(cases, records, strict=True):
        rid = record.decision.request_id
        done = await env.collector.outcome(rid)
        assert done.status == "failed"
        events = env.collector.events_of(rid)
        assert any(isinstance(e, fact) for e in events), events
        # fold what the window would fold: the user's next request is refused for that reason
        user.events.extend(events)
        again = user.decide(uid("r"), BOOK, **ask).decision
        assert (again.allowed, again.reason) == (False, reason)
    await env.collector.outcome(page_case.decision.request_id)
    page_facts = env.collector.events_of(page_case.decision.request_id)
    restriction = next(e for e in page_facts if isinstance(e, PageRestricted))
    page = fold_page(PageState(page_id=PAGE_US), restriction)
    assert restricted.decide(uid("r"), BOOK, page=page).decision.reason == "page_restricted"


async def test_rate_limit_is_retried_until_delivered(env: Env) -> None:
    user = User(PAGE_EU, uid("u")).opted_in("otn-rl")
    env.standin.script("error-rate-limit", recipient="otn-rl", times=2)
    record = user.decide(uid("r"), BOOK, purpose="otn", topic="restock")
    await env.send(record)
    done = await env.collector.outcome(record.decision.request_id)
    assert (done.status, done.calls) == ("sent", 3)
    assert env.standin.double_used_tokens() == {}  # rate-limited calls delivered nothing


async def test_graph_timeout_is_unknown_and_never_retried(kafka_bootstrap: str) -> None:
    # Its own dispatcher, the only one with a short Graph timeout. The stand-in runs on the same
    # event loop and starts its delay after the client started its clock, so the client always
    # gives up first, however busy the machine.
    async with running(kafka_bootstrap, graph_timeout_s=0.5) as env:
        user = User(PAGE_EU, uid("u")).opted_in("otn-slow")
        env.standin.script("timeout", recipient="otn-slow", delay_s=3.0)
        record = user.decide(uid("r"), BOOK, purpose="otn", topic="restock")
        await env.send(record)
        rid = record.decision.request_id
        done = await env.collector.outcome(rid)
        assert done.status == "unknown" and done.calls == 1
        assert any(isinstance(e, TokenOutcomeUnknown) for e in env.collector.events_of(rid))
        await until(lambda: len(env.standin.calls_for(f"hello {rid}")) == 1, "the slow call")
        assert env.standin.token_uses()["otn-slow"] == 1


async def test_expired_decision_is_not_sent_and_frees_its_token(env: Env) -> None:
    user = User(PAGE_EU, uid("u")).opted_in("otn-late", ago_ms=3 * HOUR)
    past = now_ms() - 2 * HOUR
    record = user.decide(
        uid("r"),
        BOOK,
        at=past,  # decided two hours ago, with a deadline one hour ago: a stale backlog
        purpose="otn",
        topic="restock",
        send_by=past + HOUR,
        message={"text": "too late"},
    )
    assert record.decision.allowed and record.decision.valid_until == past + HOUR
    await env.send(record)
    rid = record.decision.request_id
    done = await env.collector.outcome(rid)
    assert done.status == "failed" and "no longer" in (done.detail or "")
    assert env.standin.calls_for("too late") == []
    assert any(isinstance(e, TokenReleased) for e in env.collector.events_of(rid))


async def test_page_without_access_token_is_failed_without_a_call(env: Env) -> None:
    user = User("100200300400500", uid("u")).wrote()
    record = user.decide(uid("r"), BOOK)
    assert record.decision.allowed
    await env.send(record)
    done = await env.collector.outcome(record.decision.request_id)
    assert done.status == "failed" and "access_token" in (done.detail or "")
    assert env.standin.calls_for(f"hello {record.decision.request_id}") == []


async def test_undecodable_decision_goes_to_dead_letter(env: Env) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(env.topics.decisions, b'{"not": "a decision"}', key=b"x:y")
    finally:
        await producer.stop()
    after = User(PAGE_EU, uid("u")).wrote().decide(uid("r"), BOOK)
    await env.send(after)
    assert (await env.collector.outcome(after.decision.request_id)).status == "sent"
    consumer = AIOKafkaConsumer(
        env.topics.dead_letter, bootstrap_servers=env.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000)
        records = [m.value for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    assert any(b"undecodable decision" in (r or b"") for r in records)


async def test_two_instances_share_the_work_and_survive_a_rebalance(kafka_bootstrap: str) -> None:
    standin = GraphStandIn(TOKENS)
    await standin.start()
    prefix = unique_name("pair") + "."
    topics = await create_topics(kafka_bootstrap, prefix, 4)
    collector = Collector(kafka_bootstrap, topics)
    await collector.start()
    cfg = config(kafka_bootstrap, prefix, standin.base_url, partitions=4, role="worker")
    first = DispatcherService(cfg, BOOK, host="127.0.0.1", page_tokens=TOKENS)
    second = DispatcherService(cfg, BOOK, host="127.0.0.1", page_tokens=TOKENS)
    try:
        await first.start()
        await second.start()
        assert first.dispatcher is not None and second.dispatcher is not None
        d1, d2 = first.dispatcher, second.dispatcher
        await until(
            lambda: (
                len(d1.workers) + len(d2.workers) == 4 and bool(d1.workers) and bool(d2.workers)
            ),
            "a split",
        )
        users = [User(PAGE_EU, uid("u")).wrote().opted_in(f"tok-{i}-{prefix}") for i in range(120)]
        records = [u.decide(uid("r"), BOOK, purpose="otn", topic="restock") for u in users]
        await produce(kafka_bootstrap, topics.decisions, records[:60])
        await until(lambda: len(collector.done) >= 20, "first deliveries")
        await second.stop()  # its partitions move to the first instance mid-stream
        await produce(kafka_bootstrap, topics.decisions, records[60:])
        await until(lambda: len(collector.done) == 120, "all 120 outcomes", 60)
        assert standin.double_used_tokens() == {}
        assert all(n == 1 for n in standin.text_uses().values())
        assert all(len(d) == 1 and d[0].status == "sent" for d in collector.done.values())
        assert sorted(standin.text_uses().values()) == [1] * 120
    finally:
        await second.stop()
        await first.stop()
        await collector.stop()
        await standin.stop()


def calls_with(standin: GraphStandIn, token: str) -> int:
    """Every call that carried `token`, whatever Graph answered."""
    return sum(1 for c in standin.calls if c.token == token)


def granted_twice(user: User, token: str) -> tuple[DecisionRecord, DecisionRecord]:
    """Two requests allowed with the same token, as a faulty window that lost its reservation
    would decide them (each against the state before the other)."""
    first = user.decide(uid("r"), BOOK, purpose="otn", topic="restock")
    second = user.decide(uid("r"), BOOK, purpose="otn", topic="restock")
    assert first.decision.allowed and second.decision.allowed
    assert first.decision.token == second.decision.token == token
    return first, second


def assert_refused_for(collector: Collector, done: Done, holder: str) -> None:
    assert (done.status, done.calls) == ("failed", 0)
    assert f"token already attempted by request {holder}" in (done.detail or "")
    # only the outcome goes back: the token stays with the request that used it
    assert [type(e) for e in collector.events_of(done.request_id)] == [SendOutcome]


async def test_a_token_granted_twice_goes_into_one_graph_call(env: Env) -> None:
    token = uid("otn-twice")
    first, second = granted_twice(User(PAGE_EU, uid("u")).opted_in(token), token)
    await env.send(first, second)
    sent = await env.collector.outcome(first.decision.request_id)
    refused = await env.collector.outcome(second.decision.request_id)
    assert sent.status == "sent"
    assert_refused_for(env.collector, refused, first.decision.request_id)
    assert calls_with(env.standin, token) == 1
    assert env.standin.calls_for(f"hello {second.decision.request_id}") == []
    assert len(env.collector.done[second.decision.request_id]) == 1


async def test_a_restarted_dispatcher_refuses_a_used_token_from_the_log_alone(
    kafka_bootstrap: str,
) -> None:
    """The second request reaches a new instance, which knows the token only from the log; a
    token whose call Meta definitely rejected before delivery is given back, and is usable."""
    standin = GraphStandIn(TOKENS)
    await standin.start()
    prefix = unique_name("token-restart") + "."
    topics = await create_topics(kafka_bootstrap, prefix, 2)
    collector = Collector(kafka_bootstrap, topics)
    await collector.start()
    cfg = config(kafka_bootstrap, prefix, standin.base_url, role="worker", max_retries=1)
    used, rejected = uid("otn-used"), uid("otn-rejected")
    user = User(PAGE_EU, uid("u")).opted_in(used).opted_in(rejected, "back-in-stock")
    first, second = granted_twice(user, used)
    standin.script("error-rate-limit", recipient=rejected, times=2)  # first call and its retry
    given_back = user.decide(uid("r"), BOOK, purpose="otn", topic="back-in-stock")
    again = user.decide(uid("r"), BOOK, purpose="otn", topic="back-in-stock")
    assert given_back.decision.token == again.decision.token == rejected
    try:
        first_run = DispatcherService(cfg, BOOK, host="127.0.0.1", page_tokens=TOKENS)
        await first_run.start()
        try:
            await produce(kafka_bootstrap, topics.decisions, [first, given_back])
            assert (await collector.outcome(first.decision.request_id)).status == "sent"
            assert (await collector.outcome(given_back.decision.request_id)).status == "failed"
        finally:
            await first_run.stop()
        second_run = DispatcherService(cfg, BOOK, host="127.0.0.1", page_tokens=TOKENS)
        await second_run.start()
        try:
            await produce(kafka_bootstrap, topics.decisions, [second, again])
            refused = await collector.outcome(second.decision.request_id)
            assert (await collector.outcome(again.decision.request_id)).status == "sent"
        finally:
            await second_run.stop()
        assert_refused_for(collector, refused, first.decision.request_id)
        assert calls_with(standin, used) == 1
        assert calls_with(standin, rejected) == 3  # two rejected before delivery, one delivery
        assert standin.double_used_tokens() == {}
    finally:
        await collector.stop()
        await standin.stop()
