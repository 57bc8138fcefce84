"""ingest against a real Kafka broker: what was posted is what is in the topic, and nothing
accepted is lost when the broker goes away (I7).

The outage test runs its OWN broker (not the session one) on fixed ports and a data directory it
keeps, so it can freeze it (SIGSTOP: connections stay open, nothing answers: the deadline path),
stop it (connections refused) and start it again on the same port with the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from devtools.devbroker import LocalKafka, create_topics, free_port, unique_name
from schemas.events import decode_event
from schemas.topics import Topics
from services.common.kafka import durable_producer
from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher
from tests.unit.test_ingest_app import (
    CONFIG,
    all_fixtures,
    body_with,
    expected_records,
    message_element,
    signed,
)
from windowgate.meta.normalise import normalise

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
PARTITIONS = 4
PUBLISH_TIMEOUT_S = 15.0
"""Generous: a test that is not about the publish deadline must not meet it on a busy machine."""

Consumed = tuple[int, bytes | None, bytes]
"""(partition, key, value) of one record read back."""


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str, deadline_s: float = DEADLINE_S) -> list[Consumed]:
    """Every record of `topic`, up to its end offsets taken now (an acknowledged record is
    below them), partition by partition."""
    partitions = await partitions_of(bootstrap, topic)
    assert partitions, f"topic {topic} does not exist"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        by_partition: dict[int, list[Consumed]] = {p: [] for p in partitions}
        deadline = time.monotonic() + deadline_s
        while sum(map(len, by_partition.values())) < total:
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                by_partition[tp.partition] += [(tp.partition, m.key, m.value) for m in messages]
            assert time.monotonic() < deadline, f"{topic}: read {by_partition} of {total}"
        return [r for p in partitions for r in by_partition[p]]
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def ingest(
    bootstrap: str,
    topics: Topics,
    *,
    first_connect_wait_s: float = 10.0,
    producer_factory: Callable[[str], AIOKafkaProducer] = durable_producer,
    replace_after_s: float = 30.0,
    publish_timeout_s: float = PUBLISH_TIMEOUT_S,
    **changes: Any,
) -> AsyncIterator[TestClient[Any, Any]]:
    publisher = KafkaPublisher(
        bootstrap,
        topics,
        PARTITIONS,
        producer_factory=producer_factory,
        first_connect_wait_s=first_connect_wait_s,
        retry_delay_s=(0.1, 0.5),
        connect_timeout_s=3.0,
        retire_timeout_s=5.0,
        replace_after_s=replace_after_s,
    )
    config = replace(CONFIG, publish_timeout_s=publish_timeout_s, **changes)
    client = TestClient(TestServer(create_app(config, publisher, topics)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def post(client: TestClient[Any, Any], body: bytes) -> int:
    return (await answer(client, body))[0]


async def answer(client: TestClient[Any, Any], body: bytes) -> tuple[int, str]:
    """The status and, for a refusal, its detail."""
    async with client.post("/webhook", data=body, headers=signed(body)) as response:
        if response.status == 200:
            return 200, ""
        return response.status, str((await response.json())["detail"])


async def wait_healthy(client: TestClient[Any, Any], deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while (await client.get("/healthz")).status != 200:
        assert time.monotonic() < deadline, "ingest did not become healthy"
        await asyncio.sleep(0.2)


def partition_of(key: bytes) -> int:
    """Kafka's default (murmur2) partitioner: the one every keyed topic's producer uses."""
    everything = list(range(PARTITIONS))
    return int(DefaultPartitioner()(key, everything, everything))


# ---- what was posted is what is in the topic ----------------------------------------------------


async def test_posted_bodies_are_exactly_what_is_in_the_topics(kafka_bootstrap: str) -> None:
    topics = Topics(unique_name("ingest") + ".")
    bodies = [path.read_bytes() for path in all_fixtures()]
    odd = body_with(
        message_element("m_with_odd_neighbour"),
        {"sender": {"id": "1254459154682919"}, "timestamp": 1, "game_play": {"score": 3}},
    )
    async with ingest(kafka_bootstrap, topics) as client:
        await wait_healthy(client)
        for body in [*bodies, odd, bodies[0], bodies[13]]:  # the last two: Meta redelivers
            assert await post(client, body) == 200
        metrics = await (await client.get("/metrics")).text()

    expected = [r for body in [*bodies, odd] for r in expected_records(body)]
    events = await read_topic(kafka_bootstrap, topics.events)
    assert Counter((key, value) for _, key, value in events) == Counter(
        (key, value) for _, key, value in expected
    )
    for partition, key, value in events:
        assert key is not None
        event = decode_event(value)
        assert key == f"{event.page_id}:{event.user_id}".encode()
        assert partition == partition_of(key)

    [(_, key, value)] = await read_topic(kafka_bootstrap, topics.dead_letter)
    letter = orjson.loads(value)
    assert key == b"682498171943165"
    assert "game_play" in letter["reason"]
    assert letter["raw"]["game_play"] == {"score": 3}
    assert 'windowgate_ingest_duplicates_skipped_total{level="body"} 2.0' in metrics


async def test_topics_are_created_with_the_configured_partitions(kafka_bootstrap: str) -> None:
    topics = Topics(unique_name("ingest-layout") + ".")
    async with ingest(kafka_bootstrap, topics) as client:
        await wait_healthy(client)
        for name in topics.keyed:
            assert await partitions_of(kafka_bootstrap, name) == list(range(PARTITIONS)), name
        assert await partitions_of(kafka_bootstrap, topics.dead_letter)


async def test_without_a_broker_the_service_runs_and_answers_503() -> None:
    topics = Topics(unique_name("ingest-nobroker") + ".")
    nowhere = f"127.0.0.1:{free_port()}"
    # No broker ever comes: that the service answers at all shows start-up does not wait for one.
    async with (
        asyncio.timeout(DEADLINE_S),
        ingest(nowhere, topics, first_connect_wait_s=0.5) as client,
    ):
        assert await post(client, (all_fixtures()[0]).read_bytes()) == 503
        response = await client.get("/healthz")
        assert response.status == 503
        detail = (await response.json())["broker"]
        assert nowhere in detail


async def test_a_failed_producer_is_replaced_without_a_restart(kafka_bootstrap: str) -> None:
    """A producer that can no longer send (here: closed under the publisher's feet; its sends
    just hang) gives 503s until the publisher gives up on it and builds a fresh one. The short
    publish deadline is what turns a hanging send into a 503 here."""
    topics = Topics(unique_name("ingest-replace") + ".")
    made: list[AIOKafkaProducer] = []

    def factory(bootstrap: str) -> AIOKafkaProducer:
        made.append(durable_producer(bootstrap))
        return made[-1]

    first, second = _bodies(100, 1)[0], _bodies(101, 1)[0]
    async with ingest(
        kafka_bootstrap,
        topics,
        producer_factory=factory,
        replace_after_s=1.0,
        publish_timeout_s=0.5,
    ) as client:
        await wait_healthy(client)
        await made[0].stop()
        assert await post(client, first) == 503
        await _post_until_accepted(client, [first, second])
        # Replaced; on a busy machine a fresh producer slower than the deadline for a second may
        # be replaced once more, which is the same behaviour.
        assert len(made) >= 2
    keys = {
        decode_event(v).dedup_key for _, _, v in await read_topic(kafka_bootstrap, topics.events)
    }
    assert keys >= {"msg:m_outage_100", "msg:m_outage_101"}


async def test_topics_with_another_partition_count_are_refused(kafka_bootstrap: str) -> None:
    """A keyed topic with the wrong partition count would split users' records: never publish."""
    topics = Topics(unique_name("ingest-layout-bad") + ".")
    await create_topics(kafka_bootstrap, [topics.events], partitions=PARTITIONS + 1)
    expected = f"has {PARTITIONS + 1} partitions, expected {PARTITIONS}"
    async with ingest(kafka_bootstrap, topics, first_connect_wait_s=0.1) as client:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            response = await client.get("/healthz")
            assert response.status == 503
            if expected in (await response.json())["broker"]:
                break
            assert time.monotonic() < deadline, "the layout problem was never reported"
            await asyncio.sleep(0.1)
        assert await post(client, all_fixtures()[0].read_bytes()) == 503


# ---- the broker goes away mid-stream; nothing accepted is lost ---------------------------------


def _bodies(first: int, count: int) -> list[bytes]:
    """Distinct bodies, two events each (one user message, one read), for the outage test."""
    return [
        body_with(
            message_element(f"m_outage_{i}", ts=1_700_000_000_000 + i),
            {
                "sender": {"id": "1254459154682919"},
                "recipient": {"id": "682498171943165"},
                "read": {"watermark": 1_700_000_000_000 + i},
            },
        )
        for i in range(first, first + count)
    ]


async def _post_until_accepted(client: TestClient[Any, Any], bodies: list[bytes]) -> None:
    """What Meta does with a body that got a non-200: send it again, until it gets a 200."""
    deadline = time.monotonic() + DEADLINE_S
    for body in bodies:
        while await post(client, body) != 200:
            assert time.monotonic() < deadline, "a body was never accepted after the outage"
            await asyncio.sleep(0.2)


async def test_broker_outage_gives_503s_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    data_dir = tmp_path / "kafka"
    kafka = LocalKafka(port=port, controller_port=controller_port, data_dir=data_dir)
    bootstrap = f"127.0.0.1:{port}"
    topics = Topics(unique_name("ingest-outage") + ".")
    pid = 0
    try:
        async with ingest(
            bootstrap, topics, first_connect_wait_s=0.2, publish_timeout_s=1.0
        ) as client:
            # 0. The broker is not there yet: the service is up, unhealthy, and answers 503.
            early = _bodies(0, 5)
            assert [await post(client, b) for b in early] == [503] * 5
            assert (await client.get("/healthz")).status == 503

            kafka.start()
            pid = int((data_dir / "broker.pid").read_text())
            await wait_healthy(client)  # recovered without a restart
            accepted = _bodies(5, 10)
            # A broker just back may be slower than the 1 s deadline at first: Meta would retry.
            await _post_until_accepted(client, accepted)

            # 1. Frozen broker: connections open, no answers. Every body gets its 503 from the
            # publish deadline (1 s here, well within Meta's 5 s), not from the broker: how long
            # that takes on a busy machine is for the benchmarks, not for this test.
            os.kill(pid, signal.SIGSTOP)
            frozen = _bodies(15, 10)
            answers = await asyncio.gather(*(answer(client, b) for b in frozen))
            assert [status for status, _ in answers] == [503] * len(frozen)
            for _, detail in answers:
                assert "did not acknowledge" in detail and "within 1.0 s" in detail, detail
            assert (await client.get("/healthz")).status == 503
            os.kill(pid, signal.SIGCONT)

            # 2. Stopped broker: connections refused.
            kafka.stop()
            stopped = _bodies(25, 10)
            assert [await post(client, b) for b in stopped] == [503] * len(stopped)
            assert (await client.get("/healthz")).status == 503

            # 3. Back on the same port with the same data; Meta retries every refused body.
            kafka.start()
            await wait_healthy(client)
            await _post_until_accepted(client, early + frozen + stopped)
            later = _bodies(35, 5)
            await _post_until_accepted(client, later)

        everything = early + accepted + frozen + stopped + later
        wanted = {
            (e.key.encode(), e.dedup_key)
            for body in everything
            for e in normalise(orjson.loads(body)).events
        }
        assert len(wanted) == 2 * len(everything)
        found = [
            (key, decode_event(value).dedup_key)
            for _, key, value in await read_topic(bootstrap, topics.events)
        ]
        assert wanted <= set(found)  # every event of every body; a retry may have added copies
        assert set(found) <= wanted  # and nothing else
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        kafka.stop()
