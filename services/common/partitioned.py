"""A fenced, transactional processor of co-partitioned topics: one writer per partition, by Kafka.

A service that owns state per partition (the window worker) runs on this. What it guarantees:

- **Co-partitioned assignment.** One consumer group reads every input topic; `CopartitionedAssignor`
  gives partition *n* of every input topic to the same member, and tells every member who owns what
  (each member's advertised URL rides in the group protocol), so queries can be forwarded.
- **Fencing.** Each partition *n* has a transactional producer `<group>-p<n>`. Starting it
  (`init_transactions`) aborts whatever a previous owner left open and fences that owner: a worker
  that stalled past its session timeout (GC pause, SIGSTOP) and wakes up can commit nothing.
- **State is re-read after every fence.** After the producer starts, and only then, the partition
  reads its input offsets from the group and restores its state from its changelog, read_committed,
  to the end. Whatever a previous owner committed before being fenced is therefore in both, and
  nothing it did after is in either. This is the rule that makes the single writer hold; it is
  applied on every (re)acquisition: assignment, and recovery from any failed transaction.
- **One transaction per batch.** A batch of input records is processed synchronously by the
  service's `PartitionLogic`; its outputs (changelog records, output records, dead letters) and the
  batch's input offsets are committed in ONE transaction. If the transaction fails, the logic drops
  what the batch did and the partition is acquired again (re-fence, re-read offsets and state).

Readers of anything written here must use read_committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError, ProducerFenced

from services.common.kafka import fencing_producer

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


# ---- assignment ----------------------------------------------------------------------------------


class CopartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Partition n of every subscribed topic to one member; the owner map to every member.

    Members are ordered by their advertised URL (stable across restarts, unlike member ids) and
    partitions are dealt round-robin, so a restarted worker gets the same partitions back. The
    leader writes `{partition: url}` into every member's assignment; `on_assignment` keeps it.
    """

    name = "windowgate-copartitioned"
    version = 0

    def __init__(self, url: str) -> None:
        self.url = url
        self.owners: dict[int, str] = {}

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), self.url.encode())

    def assign(
        self,
        cluster: ClusterMetadata,
        members: Mapping[str, ConsumerProtocolMemberMetadata],
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = sorted({t for m in members.values() for t in m.subscription})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        numbers = max(counts.values(), default=0)
        order = sorted(members, key=lambda m: (members[m].user_data or b"", m))
        owner_of = {n: order[n % len(order)] for n in range(numbers)} if order else {}
        urls = {n: (members[m].user_data or b"").decode() for n, m in owner_of.items()}
        shared = orjson.dumps({str(n): url for n, url in urls.items()})
        result: dict[str, ConsumerProtocolMemberAssignment] = {}
        for member in members:
            mine = [n for n, m in owner_of.items() if m == member]
            assignment = [
                (t, [n for n in mine if n < counts[t]])
                for t in topics
                if t in members[member].subscription
            ]
            result[member] = ConsumerProtocolMemberAssignment(self.version, assignment, shared)
        return result

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        try:
            shared = orjson.loads(assignment.user_data or b"{}")
            self.owners = {int(n): str(url) for n, url in shared.items()}
        except (orjson.JSONDecodeError, ValueError, AttributeError):
            self.owners = {}


# ---- what a service plugs in ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record a batch writes. `partition` None: Kafka's default partitioner places it."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


class PartitionLogic(Protocol):
    """The service's state and steps for one partition. Only `restore` awaits."""

    async def restore(self) -> None:
        """Bring the state up to the end of its changelog (read_committed). Called right after
        the partition's producer fenced every previous owner, before any record is processed."""

    def process(self, records: Sequence[Record]) -> list[Outgoing]:
        """Apply a batch to a working copy of the state; return what to write. No awaits."""

    def committed(self, written: Mapping[TopicPartition, int]) -> None:
        """The batch's transaction committed: make its changes the state. `written`: per
        partition written to, the offset after the batch's last record there."""

    def rolled_back(self) -> None:
        """The batch's transaction did not commit: forget its changes."""

    def released(self, clean: bool) -> None:
        """The partition is no longer ours. `clean`: every batch processed was committed (the state
        may be kept and caught up from its changelog later); else it must be thrown away."""

    def wants_turn(self) -> float | None:
        """Work of the logic's own, with no input (a broadcast's next slice, a schedule): seconds
        until it wants a turn (`process([])`, committed like any batch); 0: now; None: none.
        Return 0 only when a turn would make progress, or the partition spins."""


# ---- one partition -------------------------------------------------------------------------------


@dataclass
class PartitionStats:
    batches: int = 0
    records: int = 0
    acquisitions: int = 0
    failures: int = 0
    restore_s: float = 0.0


class PartitionTask:
    """Acquire (fence, offsets, restore), then batch → process → commit, until stopped."""

    def __init__(self, runner: PartitionedRunner, partition: int, logic: PartitionLogic) -> None:
        self.runner = runner
        self.partition = partition
        self.logic = logic
        self.tps = [TopicPartition(t, partition) for t in runner.topics]
        self.queue: deque[Record] = deque()
        self.expected: dict[TopicPartition, int] = {}
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self.stopping = False
        self.fenced = False
        self.clean = True
        self.producer: AIOKafkaProducer | None = None
        self.task: asyncio.Task[None] | None = None
        self.stats = PartitionStats()

    @property
    def transactional_id(self) -> str:
        return f"{self.runner.group}-p{self.partition}"

    def start(self) -> None:
        self.task = asyncio.create_task(self._main(), name=f"partition {self.partition}")

    def feed(self, records: Sequence[Record]) -> None:
        if not self.stopping and self.ready.is_set():
            self.queue.extend(records)
            self.wake.set()

    async def stop(self) -> None:
        """Finish the batch in progress (commit or roll back), then let the partition go."""
        self.stopping = True
        self.wake.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.task), self.runner.stop_grace_s)
            if not self.task.done():
                self.task.cancel()
                self.clean = False
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.task
        await self._close_producer()
        self.logic.released(self.clean and not self.fenced)

    async def _main(self) -> None:
        delay = 0.2
        while not self.stopping:
            try:
                await self._acquire()
                delay = 0.2
                await self._loop()
                return
            except ProducerFenced:
                self.fenced = True
                self.clean = False
                self.ready.clear()
                self.queue.clear()
                log.warning(
                    "partition %d: fenced by a newer owner (%s); letting it go",
                    self.partition,
                    self.transactional_id,
                )
                self.runner.partition_lost(self.partition)
                return
            except asyncio.CancelledError:
                self.clean = False
                raise
            except Exception as exc:  # broker gone, timeouts: re-acquire from what Kafka holds
                self.clean = False
                self.stats.failures += 1
                self.ready.clear()
                self.queue.clear()
                await self._close_producer()
                self.runner.pause([self.partition])
                log.warning(
                    "partition %d: %s: %s; acquiring it again in %.1f s",
                    self.partition,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _acquire(self) -> None:
        """Fence, then read offsets and state: the order is what makes the single writer hold."""
        started = time.monotonic()
        self.stats.acquisitions += 1
        self.runner.pause([self.partition])
        self.queue.clear()
        producer = fencing_producer(
            self.runner.bootstrap,
            self.transactional_id,
            max_batch_size=512 * 1024,
            transaction_timeout_ms=self.runner.transaction_timeout_ms,
            request_timeout_ms=self.runner.request_timeout_ms,
        )
        self.producer = producer
        await asyncio.wait_for(producer.start(), self.runner.request_timeout_ms / 1000 * 2)
        offsets = await self.runner.committed(self.tps)
        await self.logic.restore()
        self.expected = dict(offsets)
        self.runner.seek(offsets)
        self.clean = True
        self.stats.restore_s = time.monotonic() - started
        self.ready.set()
        self.runner.resume([self.partition])
        log.info(
            "partition %d: acquired in %.2f s (offsets %s)",
            self.partition,
            self.stats.restore_s,
            {f"{tp.topic}": o for tp, o in offsets.items()},
        )

    async def _loop(self) -> None:
        limit = self.runner.batch
        while True:
            if self.stopping:
                return
            if not self.queue:
                wait = self.logic.wants_turn()
                if wait is not None and wait <= 0:
                    await self._commit([], {})  # an idle turn: the logic's own work
                    continue
                self.wake.clear()
                with contextlib.suppress(TimeoutError):  # a timer: the logic's next turn
                    await asyncio.wait_for(self.wake.wait(), wait)
                continue
            records: list[Record] = []
            offsets: dict[TopicPartition, int] = {}
            while self.queue and len(records) < limit:
                record = self.queue.popleft()
                tp = TopicPartition(record.topic, record.partition)
                if record.offset < self.expected.get(tp, 0):
                    continue  # seen again after a seek: already applied
                self.expected[tp] = record.offset + 1
                offsets[tp] = record.offset + 1
                records.append(record)
            if not records:
                continue
            await self._commit(records, offsets)

    async def _commit(self, records: list[Record], offsets: dict[TopicPartition, int]) -> None:
        outputs = self.logic.process(records)
        producer = self.producer
        if producer is None:
            raise RuntimeError("no producer")
        self.clean = False
        try:
            written = await asyncio.wait_for(
                self._transaction(producer, outputs, offsets),
                self.runner.request_timeout_ms / 1000 * 2,
            )
        except BaseException:
            self.logic.rolled_back()
            raise
        self.logic.committed(written)
        self.clean = True
        self.stats.batches += 1
        self.stats.records += len(records)
        self.runner.committed_batch(self.partition, len(records))

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        outputs: list[Outgoing],
        offsets: dict[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        """Commit `outputs` and `offsets`; returns, per partition written, the offset after the
        last record written there (where a later read of only what followed can start)."""
        sends: list[asyncio.Future[Any]] = []
        written: dict[TopicPartition, int] = {}
        if not outputs and not offsets:
            return written  # an idle turn that wrote nothing: no transaction to open
        try:
            async with producer.transaction():
                # Offsets first: Kafka 4 verifies one request per transactional id at a time
                # (KIP-890), and an offset commit verified while a produce is being verified
                # fails that produce with a retried NotEnoughReplicasError.
                if offsets:  # an idle turn consumed no input
                    await producer.send_offsets_to_transaction(offsets, self.runner.group)
                for o in outputs:
                    sends.append(
                        await producer.send(o.topic, o.value, key=o.key, partition=o.partition)
                    )
                for meta in await asyncio.gather(*sends):
                    tp = TopicPartition(meta.topic, meta.partition)
                    written[tp] = max(written.get(tp, 0), meta.offset + 1)
        finally:
            for sent in sends:  # a failed transaction fails them all: one error is enough
                sent.add_done_callback(_retrieve)
        return written

    async def _close_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# ---- the consumer and its partitions -------------------------------------------------------------


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: PartitionedRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.runner.revoke({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.runner.assign({tp.partition for tp in assigned})


@dataclass
class RunnerHooks:
    """What the service learns from the runner (all optional)."""

    on_assigned: Callable[[set[int]], None] = lambda partitions: None
    on_released: Callable[[set[int]], None] = lambda partitions: None
    on_batch: Callable[[int, int], None] = lambda partition, records: None


@dataclass
class PartitionedRunner:
    """The group member: one consumer over `topics`, a `PartitionTask` per owned partition."""

    bootstrap: str
    group: str
    topics: Sequence[str]
    url: str
    make_logic: Callable[[int], PartitionLogic]
    batch: int = 1000
    session_timeout_ms: int = 10_000
    request_timeout_ms: int = 15_000
    transaction_timeout_ms: int = 30_000
    stop_grace_s: float = 15.0
    hooks: RunnerHooks = field(default_factory=RunnerHooks)

    def __post_init__(self) -> None:
        self.assignor = CopartitionedAssignor(self.url)
        self.tasks: dict[int, PartitionTask] = {}
        self.logics: dict[int, PartitionLogic] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.rebalancing = True
        self._running = False
        self._paused: set[int] = set()
        self._lost: dict[int, asyncio.Task[None]] = {}

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            partition_assignment_strategy=(self.assignor,),
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.session_timeout_ms // 5),
            max_poll_records=self.batch * 4,
            request_timeout_ms=max(self.request_timeout_ms, self.session_timeout_ms + 5000),
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=_Listener(self))
        self._running = True

    async def run(self) -> None:
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("start() first")
        high = self.batch * 8
        while self._running:
            try:
                batches = await consumer.getmany(timeout_ms=100, max_records=self.batch * 4)
            except KafkaError as exc:  # the broker is away; the consumer reconnects by itself
                log.warning("consumer: %r; polling again in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batches.items():
                task = self.tasks.get(tp.partition)
                if task is not None:
                    task.feed(records)
            self._back_pressure(high)

    async def stop(self) -> None:
        self._running = False
        for pending in self._lost.values():
            pending.cancel()
        await self.revoke(set(self.tasks))
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            self.consumer = None

    # ---- assignment ---------------------------------------------------------------------------

    def assign(self, partitions: set[int]) -> None:
        self.pause(partitions)
        for n in sorted(partitions):
            if n in self.tasks:
                continue
            logic = self.logics.get(n) or self.make_logic(n)
            self.logics[n] = logic
            task = PartitionTask(self, n, logic)
            self.tasks[n] = task
            task.start()
        self.rebalancing = False
        self.hooks.on_assigned(set(partitions))
        log.info("assigned partitions %s; owners %s", sorted(partitions), self.assignor.owners)

    async def revoke(self, partitions: set[int]) -> None:
        self.rebalancing = True
        tasks = [self.tasks.pop(n) for n in sorted(partitions) if n in self.tasks]
        await asyncio.gather(*(t.stop() for t in tasks), return_exceptions=True)
        for task in tasks:
            if not (task.clean and not task.fenced):
                self.logics.pop(task.partition, None)
        self._paused -= partitions
        if tasks:
            self.hooks.on_released({t.partition for t in tasks})
            log.info("released partitions %s", sorted(t.partition for t in tasks))

    def partition_lost(self, partition: int) -> None:
        """Fenced: someone else owns it now; the group will tell us, or we retry it later."""
        task = self.tasks.get(partition)
        if task is not None:
            self._lost[partition] = asyncio.create_task(self._replace_lost(partition, task))

    async def _replace_lost(self, n: int, task: PartitionTask) -> None:
        # Give the group a moment: a rebalance that takes the partition away revokes it.
        await asyncio.sleep(2.0)
        self._lost.pop(n, None)
        if self.tasks.get(n) is not task or not self._running or self.consumer is None:
            return
        self.tasks.pop(n)
        await task.stop()
        self.logics.pop(n, None)
        self.hooks.on_released({n})
        # The group still says it is ours: the fencer is a stale owner that the group has thrown
        # out (or soon will). Acquire it again, fencing that one and re-reading its writes.
        if n in {tp.partition for tp in self.consumer.assignment()} and n not in self.tasks:
            self.assign({n})

    def _back_pressure(self, high: int) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        for n, task in self.tasks.items():
            size = len(task.queue)
            if size > high and n not in self._paused:
                self.pause({n})
            elif size <= high // 2 and n in self._paused and task.ready.is_set():
                self.resume({n})

    # ---- consumer helpers for the tasks ---------------------------------------------------------

    def _tps(self, partitions: set[int] | list[int]) -> list[TopicPartition]:
        return [TopicPartition(t, n) for n in partitions for t in self.topics]

    def _owned_tps(self, partitions: set[int] | list[int]) -> list[TopicPartition]:
        consumer = self.consumer
        owned = consumer.assignment() if consumer is not None else set()
        return [tp for tp in self._tps(partitions) if tp in owned]

    def pause(self, partitions: set[int] | list[int]) -> None:
        tps = self._owned_tps(partitions)
        if tps and self.consumer is not None:
            self.consumer.pause(*tps)
        self._paused |= set(partitions)

    def resume(self, partitions: set[int] | list[int]) -> None:
        tps = self._owned_tps(partitions)
        if tps and self.consumer is not None:
            self.consumer.resume(*tps)
        self._paused -= set(partitions)

    async def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed offsets (the earliest offset where none is committed)."""
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("no consumer")
        firsts = await consumer.beginning_offsets(tps)
        offsets = {}
        for tp in tps:
            at = await consumer.committed(tp)
            offsets[tp] = at if at is not None else firsts[tp]
        return offsets

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        owned = consumer.assignment()
        for tp, offset in offsets.items():
            if tp in owned:
                consumer.seek(tp, offset)

    def committed_batch(self, partition: int, records: int) -> None:
        self.hooks.on_batch(partition, records)

    # ---- what the service asks ------------------------------------------------------------------

    def owned(self) -> set[int]:
        return {n for n, t in self.tasks.items() if t.ready.is_set()}

    def owners(self) -> dict[int, str]:
        return dict(self.assignor.owners)

    def ready(self) -> str | None:
        if self.consumer is None or not self._running:
            return "the worker is starting"
        if self.rebalancing:
            return "the workers are rebalancing partitions"
        waiting = sorted(n for n, t in self.tasks.items() if not t.ready.is_set())
        if waiting:
            return f"this worker is restoring partitions {waiting}"
        return None
