"""kill -9 of the dispatcher between reserving and calling, and between calling and recording.

The dispatcher runs as `python -m services.dispatcher` with `DISPATCHER_CRASH_AT` (it SIGKILLs
itself at that point for one request), is restarted without it, and the Graph stand-in's call log
must show that no token and no request_id was ever called twice, and that the crashed request
ended `unknown` — never resent, even when its decision is delivered again.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.devbroker import unique_name
from devtools.graph_standin import GraphStandIn
from schemas.events import TokenOutcomeUnknown
from schemas.topics import Topics
from tests.integration.dispatcher_kit import (
    API_TOKEN,
    DEADLINE_S,
    PAGE_EU,
    TOKENS,
    Collector,
    DispatcherProcess,
    User,
    create_topics,
    produce,
    rules,
    write_pages,
)

BOOK = rules()
PARTITIONS = 2


@pytest_asyncio.fixture(loop_scope="session")
async def standin() -> AsyncIterator[GraphStandIn]:
    s = GraphStandIn(TOKENS)
    await s.start()
    yield s
    await s.stop()


def otn_records(count: int, tag: str) -> list:  # type: ignore[type-arg]
    users = [User(PAGE_EU, unique_name("u")).opted_in(f"{tag}-tok-{i}") for i in range(count)]
    return [u.decide(unique_name(f"{tag}-r"), BOOK, purpose="otn", topic="restock") for u in users]


def environment(bootstrap: str, prefix: str, standin: GraphStandIn, tmp: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WINDOWGATE_TOPIC_PREFIX": prefix,
        "WINDOWGATE_PARTITIONS": str(PARTITIONS),
        "GRAPH_API_URL": standin.base_url,
        "WINDOWGATE_PAGES": str(write_pages(tmp)),
        "WINDOWGATE_API_TOKENS": API_TOKEN,
        "DISPATCHER_ROLE": "worker",
        "DISPATCHER_GRAPH_TIMEOUT_S": str(DEADLINE_S),  # a slow answer is not what this tests
        "DISPATCHER_INSTANCE_ID": "crash-test",  # static member: the restart rejoins at once
    }


@pytest.mark.parametrize(("point", "calls_of_crashed"), [("after_attempt", 0), ("after_call", 1)])
async def test_kill_9_never_calls_a_token_or_request_twice(
    kafka_bootstrap: str, standin: GraphStandIn, tmp_path: Path, point: str, calls_of_crashed: int
) -> None:
    prefix = unique_name(f"crash-{point}") + "."
    topics: Topics = await create_topics(kafka_bootstrap, prefix, PARTITIONS)
    collector = Collector(kafka_bootstrap, topics)
    await collector.start()
    env = environment(kafka_bootstrap, prefix, standin, tmp_path)
    process = DispatcherProcess(env, tmp_path / "dispatcher.log")
    before, crashed, after = otn_records(3, "a"), otn_records(1, "t")[0], otn_records(3, "b")
    target = crashed.decision.request_id
    try:
        process.start(DISPATCHER_CRASH_AT=point, DISPATCHER_CRASH_REQUEST=target)
        await produce(kafka_bootstrap, topics.decisions, before)
        for record in before:
            assert (await collector.outcome(record.decision.request_id)).status == "sent"
        await produce(kafka_bootstrap, topics.decisions, [crashed])
        code = await process.exited()
        assert code == -signal.SIGKILL, process.logs()
        assert len(standin.calls_for(f"hello {target}")) == calls_of_crashed
        assert target not in collector.done  # nobody recorded the outcome yet

        # the same decision again (a redelivery), then new work, into a restarted dispatcher
        await produce(kafka_bootstrap, topics.decisions, [crashed, *after])
        process.start()
        done = await collector.outcome(target)
        assert done.status == "unknown", process.logs()
        assert any(isinstance(e, TokenOutcomeUnknown) for e in collector.events_of(target))
        for record in after:
            assert (await collector.outcome(record.decision.request_id)).status == "sent"
        await produce(kafka_bootstrap, topics.decisions, [crashed])  # and once more, later
        marker = otn_records(1, "m")[0]
        await produce(kafka_bootstrap, topics.decisions, [marker])
        await collector.outcome(marker.decision.request_id)

        assert len(standin.calls_for(f"hello {target}")) == calls_of_crashed  # never resent
        assert len(collector.done[target]) == 1
        assert standin.double_used_tokens() == {}
        every = [*before, crashed, *after, marker]
        for record in every:
            rid = record.decision.request_id
            assert len(standin.calls_for(f"hello {rid}")) <= 1, rid
            assert len(collector.done[rid]) == 1, rid
    finally:
        process.stop()
        await collector.stop()


async def test_kill_9_in_a_busy_stream(
    kafka_bootstrap: str, standin: GraphStandIn, tmp_path: Path
) -> None:
    """Killed with calls in flight: every request ends exactly once, sent or unknown, and no
    token or request reaches the Graph API twice (an unknown one at most once)."""
    prefix = unique_name("crash-busy") + "."
    topics = await create_topics(kafka_bootstrap, prefix, PARTITIONS)
    collector = Collector(kafka_bootstrap, topics)
    await collector.start()
    process = DispatcherProcess(
        environment(kafka_bootstrap, prefix, standin, tmp_path), tmp_path / "dispatcher.log"
    )
    records = otn_records(300, "busy")
    target = records[120].decision.request_id
    try:
        await produce(kafka_bootstrap, topics.decisions, records)
        process.start(DISPATCHER_CRASH_AT="after_call", DISPATCHER_CRASH_REQUEST=target)
        assert await process.exited() == -signal.SIGKILL, process.logs()
        await produce(kafka_bootstrap, topics.decisions, records[:50])  # redelivered, too
        process.start()
        for record in records:
            await collector.outcome(record.decision.request_id)
        assert collector.done[target][0].status == "unknown"
        assert standin.double_used_tokens() == {}
        for record in records:
            rid = record.decision.request_id
            [done] = collector.done[rid]
            calls = len(standin.calls_for(f"hello {rid}"))
            assert (done.status, calls) in (("sent", 1), ("unknown", 0), ("unknown", 1)), rid
    finally:
        process.stop()
        await collector.stop()
