"""The consumer of `<prefix>decisions` and its partition workers: rebalances and back-pressure.

The partition protocol itself (exactly-once delivery per partition) is `worker.PartitionWorker`;
this module only decides which partitions run here, pauses a partition whose queue is long, and
restarts a worker that failed (a fenced one is left to the rebalance).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from services.dispatcher.delivery.worker import Deps, PartitionWorker

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.dispatcher.revoke([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.dispatcher.assign([tp.partition for tp in assigned])


class Dispatcher:
    """The consumer of `decisions` and its partition workers; `run()` until `stop()`."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.config = deps.config
        self.workers: dict[int, PartitionWorker] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self._running = False
        self._paused: set[int] = set()

    async def start(self) -> None:
        """Join the group; the topics must exist (`DispatcherService.start` creates them)."""
        config = self.config
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap,
            group_id=config.group,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=config.batch,
            group_instance_id=f"{config.group}-{config.instance_id}"
            if config.instance_id
            else None,
            session_timeout_ms=config.session_timeout_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self.consumer.start()
        self.consumer.subscribe([self.deps.topics.decisions], listener=_Rebalance(self))
        self._running = True

    def assign(self, partitions: list[int]) -> None:
        for p in partitions:
            if p not in self.workers:
                worker = PartitionWorker(self.deps, p)
                self.workers[p] = worker
                worker.start()
        self._share()
        log.info("assigned partitions %s; working on %s", partitions, sorted(self.workers))

    async def revoke(self, partitions: list[int]) -> None:
        grace = self.config.graph_timeout_s * 2
        workers = [self.workers.pop(p) for p in partitions if p in self.workers]
        await asyncio.gather(*(w.stop(grace) for w in workers), return_exceptions=True)
        self._paused.difference_update(partitions)
        self._share()
        if partitions:
            log.info("revoked partitions %s", partitions)

    def _share(self) -> None:
        self.deps.deliverer.limiter.set_share(len(self.workers), self.config.partitions)

    async def run(self) -> None:
        consumer = self.consumer
        if consumer is None:
            raise RuntimeError("Dispatcher.start() first")
        high = self.config.batch * 4
        while self._running:
            batches = await consumer.getmany(timeout_ms=200, max_records=self.config.batch * 4)
            for tp, records in batches.items():
                worker = self.workers.get(tp.partition)
                if worker is not None and not worker.stopping:
                    worker.feed(records)
            await self._supervise(consumer, high)

    async def _supervise(self, consumer: AIOKafkaConsumer, high: int) -> None:
        """Back-pressure per partition, and a fresh worker where one failed."""
        for p, worker in list(self.workers.items()):
            tp = worker.tp
            if len(worker.queue) > high and p not in self._paused:
                consumer.pause(tp)
                self._paused.add(p)
            elif len(worker.queue) <= high // 2 and p in self._paused:
                consumer.resume(tp)
                self._paused.discard(p)
            task = worker.task
            if task is not None and task.done() and not worker.stopping:
                # fenced or failed: drop what it held; restart from the committed offset
                self.workers.pop(p)
                await worker.stop(0)
                if worker.fenced:
                    continue  # another instance owns p; the rebalance will tell us
                committed = await consumer.committed(tp)
                consumer.seek(tp, committed if committed is not None else 0)
                await asyncio.sleep(1.0)
                self.assign([p])

    def ready(self) -> bool:
        return self._running and all(w.ready.is_set() for w in self.workers.values())

    async def stop(self) -> None:
        self._running = False
        await self.revoke(list(self.workers))
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
