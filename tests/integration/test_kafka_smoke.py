"""Smoke tests against a real Kafka broker: the client features windowgate depends on.

Idempotent produce, transactions with read_committed, and the fencing of a producer by a newer one
with the same transactional id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ProducerFenced

from devtools.devbroker import unique_name

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0

MakeTopic = Callable[..., Awaitable[str]]
Record = tuple[bytes | None, bytes | None]


async def read_records(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Record]], bool],
    isolation_level: str = "read_uncommitted",
    deadline_s: float = DEADLINE_S,
) -> list[Record]:
    """(key, value) of every record from the start of ``topic`` (all partitions, in partition
    order) read until ``until(records)`` holds; fails after ``deadline_s``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        by_partition: dict[int, list[Record]] = {tp.partition: [] for tp in partitions}
        deadline = time.monotonic() + deadline_s
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, messages in batches.items():
                by_partition[tp.partition].extend((m.key, m.value) for m in messages)
            records = [r for p in sorted(by_partition) for r in by_partition[p]]
            if until(records):
                return records
            if time.monotonic() > deadline:
                pytest.fail(f"{topic}: condition not met after {deadline_s} s; read {records}")
    finally:
        await consumer.stop()


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            [described] = await admin.describe_topics([topic])
            if described["error_code"] == 0 and described["partitions"]:
                return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
            if time.monotonic() > deadline:
                pytest.fail(f"topic {topic} has no partitions after {DEADLINE_S} s: {described}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def at_least(n: int) -> Callable[[list[Record]], bool]:
    return lambda records: len(records) >= n


async def test_idempotent_producer_round_trip(kafka_bootstrap: str, make_topic: MakeTopic) -> None:
    topic = await make_topic(partitions=3)
    sent = [(f"user-{i % 4}".encode(), f"event-{i}".encode()) for i in range(30)]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        for key, value in sent:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()

    received = await read_records(kafka_bootstrap, topic, until=at_least(len(sent)))

    assert sorted(received) == sorted(sent)
    # Same key, same partition: each key's events come back in the order they were sent.
    for key in {k for k, _ in sent}:
        assert [v for k, v in received if k == key] == [v for k, v in sent if k == key]


async def test_transaction_commit_and_abort(kafka_bootstrap: str, make_topic: MakeTopic) -> None:
    topic = await make_topic(partitions=2)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=unique_name("smoke-tx"),
        enable_idempotence=True,
        acks="all",
    )

    def batch(name: str) -> list[Record]:
        return [(f"k{i}".encode(), f"{name}-{i}".encode()) for i in range(5)]

    committed, aborted, committed_after = batch("committed"), batch("aborted"), batch("later")
    await producer.start()
    try:
        async with producer.transaction():
            await _send_all(producer, topic, committed)
        await producer.begin_transaction()
        await _send_all(producer, topic, aborted)
        await producer.abort_transaction()
        # A committed batch after the aborted one: reading it proves the reader got past it.
        async with producer.transaction():
            await _send_all(producer, topic, committed_after)
    finally:
        await producer.stop()

    visible = await read_records(
        kafka_bootstrap,
        topic,
        isolation_level="read_committed",
        until=lambda rs: set(committed + committed_after) <= set(rs),
    )
    assert sorted(visible) == sorted(committed + committed_after)

    # The aborted records were really written: a read_uncommitted reader sees them.
    everything = await read_records(
        kafka_bootstrap, topic, until=at_least(len(committed + aborted + committed_after))
    )
    assert sorted(everything) == sorted(committed + aborted + committed_after)


async def _send_all(producer: AIOKafkaProducer, topic: str, records: Iterable[Record]) -> None:
    for key, value in records:
        await producer.send(topic, key=key, value=value)


async def test_a_second_producer_with_the_transactional_id_fences_the_first(
    kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    """The feature the window's single writer rests on (services.common.partitioned): starting a
    producer with the same transactional id aborts the old one's open transaction and fences it,
    and a read_committed reader sees only what the new one commits."""
    topic = await make_topic(partitions=1, prefix="smoke-fence")
    txn_id = unique_name("smoke-fence-p0")
    old = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    new = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=txn_id)
    await old.start()
    try:
        await old.begin_transaction()
        await (await old.send(topic, b"stale", key=b"k"))
        await new.start()  # the new owner: fences `old`, aborts its open transaction
        with pytest.raises(ProducerFenced):
            await old.commit_transaction()
        async with new.transaction():
            await (await new.send(topic, b"fresh", key=b"k"))
    finally:
        for producer in (old, new):
            with contextlib.suppress(Exception):
                await producer.stop()
    committed = await read_records(
        kafka_bootstrap, topic, until=at_least(1), isolation_level="read_committed"
    )
    assert [value for _, value in committed] == [b"fresh"]
