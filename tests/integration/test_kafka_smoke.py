"""Smoke tests against a real Kafka broker: the client features windowgate depends on.

Idempotent produce, transactions with read_committed, and a faust table whose changelog
round-trips (written by one worker, recovered by a fresh one).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from windowgate.devbroker import unique_name

pytestmark = pytest.mark.integration

FAUST_APP = Path(__file__).with_name("faust_smoke_app.py")
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


class FaustWorker:
    """faust_smoke_app.py in a subprocess, output to a log file, stopped with SIGTERM."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(FAUST_APP), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"faust worker exited ({self.proc.returncode}):\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    async def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"faust worker ignored SIGTERM for {timeout_s} s:\n{self.output()}")
            await asyncio.sleep(0.1)
        return self.proc.returncode


async def _wait_for_topic(bootstrap: str, topic: str, worker: FaustWorker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while topic not in await admin.list_topics():
            worker.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"{topic} not created after {DEADLINE_S} s:\n{worker.output()}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def test_faust_table_changelog_round_trip(
    kafka_bootstrap: str, make_topic: MakeTopic, tmp_path: Path
) -> None:
    app_id = unique_name("smoke-faust")
    source = await make_topic(partitions=1, prefix="smoke-faust-in")
    probe = await make_topic(partitions=1, prefix="smoke-faust-probe")
    changelog = f"{app_id}-totals-changelog"
    events = [("alice", 1), ("bob", 2), ("alice", 3), ("carol", 5), ("bob", 4), ("alice", 10)]
    expected = {"alice": 14, "bob": 6, "carol": 5}
    running: dict[str, list[int]] = {}
    total: dict[str, int] = {}
    for key, amount in events:
        total[key] = total.get(key, 0) + amount
        running.setdefault(key, []).append(total[key])

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, amount in events:
            await producer.send(
                source, key=json.dumps(key).encode(), value=json.dumps(amount).encode()
            )
        await producer.flush()
    finally:
        await producer.stop()

    def args(mode: str) -> list[str]:
        datadir = tmp_path / f"{mode}-data"
        dump = tmp_path / "dump.json"
        return [kafka_bootstrap, app_id, source, probe, str(datadir), mode, str(dump)]

    # 1. A worker folds the events into the table; every update lands in the changelog.
    counter = FaustWorker(tmp_path / "count.log", *args("count"))
    try:
        await _wait_for_topic(kafka_bootstrap, changelog, counter)

        def final_values_seen(records: list[Record]) -> bool:
            counter.check_alive()
            latest = {json.loads(k or b""): json.loads(v or b"") for k, v in records}
            return latest == expected

        records = await read_records(kafka_bootstrap, changelog, until=final_values_seen)
    finally:
        await counter.stop()

    updates: dict[str, list[int]] = {}
    for key, value in records:
        updates.setdefault(json.loads(key or b""), []).append(json.loads(value or b""))
    assert updates == running, f"changelog updates {updates} != running totals {running}"

    # 2. A fresh worker of the same app (memory store: it starts empty) recovers the table
    #    from the changelog alone; it does not consume the source topic in this mode.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(probe, value=b'"dump"')
    finally:
        await producer.stop()
    dump = tmp_path / "dump.json"
    recovered = FaustWorker(tmp_path / "dump.log", *args("dump"))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not dump.exists():
            recovered.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"no table dump after {DEADLINE_S} s:\n{recovered.output()}")
            await asyncio.sleep(0.2)
    finally:
        await recovered.stop()
    assert json.loads(dump.read_text()) == expected
