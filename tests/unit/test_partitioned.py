"""The co-partitioned assignment (partition n of every input topic to one member, owners shared)
and a partition's idle turns (the logic's own work between input batches)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from services.common.partitioned import CopartitionedAssignor, Outgoing, PartitionTask


class Cluster:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.counts.get(topic)
        return None if n is None else set(range(n))


TOPICS = ["p.events", "p.send-requests"]


def members(*urls: str) -> dict[str, ConsumerProtocolMemberMetadata]:
    return {
        f"member-{i}-{url[-4:]}": CopartitionedAssignor(url).metadata(TOPICS)
        for i, url in enumerate(urls)
    }


def test_each_partition_number_goes_to_one_member_in_every_topic() -> None:
    joined = members("http://w2:8081", "http://w1:8081", "http://w3:8081")
    result = CopartitionedAssignor("http://w1:8081").assign(Cluster({t: 8 for t in TOPICS}), joined)
    owned: dict[int, set[str]] = {}
    for member, assignment in result.items():
        by_topic = dict(assignment.assignment)
        assert set(by_topic) == set(TOPICS)
        assert by_topic["p.events"] == by_topic["p.send-requests"]
        for n in by_topic["p.events"]:
            owned.setdefault(n, set()).add(member)
    assert sorted(owned) == list(range(8))
    assert all(len(owners) == 1 for owners in owned.values())
    sizes = sorted(len(dict(a.assignment)["p.events"]) for a in result.values())
    assert sizes == [2, 3, 3]


def test_every_member_learns_who_owns_what_and_the_order_survives_new_member_ids() -> None:
    first = members("http://w1:8081", "http://w2:8081")
    cluster = Cluster({t: 4 for t in TOPICS})
    result = CopartitionedAssignor("x").assign(cluster, first)
    listener = CopartitionedAssignor("http://w1:8081")
    listener.on_assignment(next(iter(result.values())))
    assert listener.owners == {
        0: "http://w1:8081",
        1: "http://w2:8081",
        2: "http://w1:8081",
        3: "http://w2:8081",
    }
    # Restarted workers come back with new member ids: the same URLs get the same partitions.
    again = {f"new-{k}": v for k, v in reversed(list(first.items()))}
    listener.on_assignment(next(iter(CopartitionedAssignor("x").assign(cluster, again).values())))
    assert listener.owners[0] == "http://w1:8081"


def test_a_garbled_owner_map_is_no_map() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

    listener = CopartitionedAssignor("u")
    listener.on_assignment(ConsumerProtocolMemberAssignment(0, [], b"not json"))
    assert listener.owners == {}


# ---- a partition's idle turns (the logic's own work, with no input) ------------------------------


class FakeProducer:
    """Records what each transaction carried."""

    def __init__(self) -> None:
        self.transactions: list[tuple[dict[Any, int], list[str]]] = []
        self._offsets: dict[Any, int] = {}
        self._sent: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self._offsets, self._sent = {}, []
        yield
        self.transactions.append((self._offsets, self._sent))

    async def send_offsets_to_transaction(self, offsets: dict[Any, int], group: str) -> None:
        self._offsets = dict(offsets)

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        self._sent.append(topic)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(topic=topic, partition=0, offset=len(self._sent)))
        return future


class FakeRunner:
    group = "g"
    topics = ("t.in",)
    batch = 10
    request_timeout_ms = 5_000

    def __init__(self) -> None:
        self.batches: list[int] = []

    def committed_batch(self, partition: int, records: int) -> None:
        self.batches.append(records)


class IdleLogic:
    """Wants `turns` idle turns (each writes one record), then, once, a turn `timer_s` later."""

    def __init__(self, turns: int, timer_s: float | None = None) -> None:
        self.turns = turns
        self.due = None if timer_s is None else time.monotonic() + timer_s
        self.processed: list[int] = []
        self.asked = 0

    async def restore(self) -> None:
        return None

    def process(self, records: Sequence[Any]) -> list[Outgoing]:
        self.processed.append(len(records))
        if records:
            return []
        if self.turns > 0:
            self.turns -= 1
            return [Outgoing("t.out", b"k", b"v")]
        self.due = None  # the timer's turn, which writes nothing
        return []

    def committed(self, written: Any) -> None:
        return None

    def rolled_back(self) -> None:
        return None

    def released(self, clean: bool) -> None:
        return None

    def wants_turn(self) -> float | None:
        self.asked += 1
        if self.turns > 0:
            return 0.0
        return None if self.due is None else max(0.0, self.due - time.monotonic())


def idle_task(logic: IdleLogic) -> tuple[PartitionTask, FakeProducer, FakeRunner]:
    runner = FakeRunner()
    task = PartitionTask(runner, 0, logic)  # type: ignore[arg-type]
    producer = FakeProducer()
    task.producer = producer  # type: ignore[assignment]
    task.ready.set()
    return task, producer, runner


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_idle_turns_run_while_the_logic_asks_and_open_no_transaction_for_nothing() -> None:
    logic = IdleLogic(turns=3)
    task, producer, runner = idle_task(logic)
    loop = asyncio.create_task(task._loop())
    await until(lambda: len(logic.processed) == 3)
    asked = logic.asked
    await asyncio.sleep(0.05)
    assert logic.asked == asked  # no more work: it waits for input, no spinning
    # each idle turn is a transaction with its output and no input offsets
    assert producer.transactions == [({}, ["t.out"])] * 3
    task.feed([SimpleNamespace(topic="t.in", partition=0, offset=0, key=b"k", value=b"v")])
    await until(lambda: logic.processed[-1:] == [1])
    assert producer.transactions[-1][0] == {TopicPartition("t.in", 0): 1}
    assert runner.batches == [0, 0, 0, 1]
    task.stopping = True
    task.wake.set()
    await loop


async def test_a_timer_gives_the_logic_a_turn_without_input() -> None:
    logic = IdleLogic(turns=0, timer_s=0.05)
    task, producer, _ = idle_task(logic)
    loop = asyncio.create_task(task._loop())
    await until(lambda: logic.processed == [0])
    assert producer.transactions == []  # the turn wrote nothing: no transaction at all
    assert logic.asked <= 3  # one wait for the timer, not a busy loop
    task.stopping = True
    task.wake.set()
    await loop
