"""The window worker: the single writer of user state, fenced by Kafka transactions.

- Inputs `<prefix>events` and `<prefix>send-requests`, one consumer group (`WINDOW_APP_ID`), run by
  `services.common.partitioned`: partition n of both topics belongs to one worker, whose
  transactional producer `<app id>-p<n>` fences any previous owner. Each batch of a partition is
  one transaction: decisions, `RequestDecided` events, dead letters, the changed users' and pages'
  changelog records, and the input offsets (`partition.WindowPartition`).
- State: `<app id>-users-changelog` (partition n: the users of partition n) and
  `<app id>-pages-changelog` (page-wide state, keyed `"<page_id>:"`, written by the owner of that
  key's partition). Both compacted, read read_committed. Every worker holds a replica of all pages
  (`PagesReplica`): page blocks are needed by every user's requests.
- Queries (`services.window.web`): the owner of a user's partition answers; others forward. Reach
  counters (`reach.ReachIndex`) follow the committed state of the owned partitions.

Why not faust: its tables write the changelog outside any transaction and trust their local store,
so a worker that stalls past its session timeout wakes up, writes stale states and decides from
them (measured: lost webhooks, one OTN token sent twice); its exactly-once mode has open bug
reports (README, "Why the window does not use faust").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from schemas.broadcast import BroadcastSpec
from schemas.state import PageState, UserState, decode_page_state
from schemas.topics import Topics
from services.common.logread import Record, read_to_end, reader
from services.common.partitioned import PartitionedRunner, RunnerHooks
from services.common.runtime import now_ms
from services.common.topics import TopicSpec, ensure_topic_specs
from services.window.broadcasts import DryRun, Pacer, dry_run_partition
from services.window.config import WindowConfig
from services.window.partition import WindowPartition, WindowShared
from services.window.processing import Result, partition_for
from services.window.queries import reach_view, user_view
from services.window.reach import ReachIndex
from services.window.store import decode_stored_user
from services.window.web import QueryApi, WebServer
from windowgate.core.decide import Verdict
from windowgate.core.rulebook import RuleBook

log = logging.getLogger(__name__)

SCAN_CHUNK = 500
SETTLE_EVERY_S = 30.0
FLUSH_CHUNK = 2_000


def settle_long_lived_objects() -> None:
    """Move everything alive now out of the cycle collector's sight (`gc.freeze`).

    A worker holds millions of long-lived, acyclic objects (users' state, reach facts); profiling
    showed the collector walking them again and again for ~28% of the worker's CPU. Reference
    counting still frees them when they are replaced; only cycle detection skips them."""
    gc.freeze()


class Metrics:
    """Prometheus metrics of one worker (its own registry: tests build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records = Counter(
            "window_records",
            "Records committed, by source topic kind and outcome",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.batches = Counter(
            "window_transactions", "Batches committed in one transaction", registry=self.registry
        )
        self.restore = Histogram(
            "window_restore_seconds",
            "Time to acquire a partition (fence, offsets, changelog read)",
            registry=self.registry,
        )
        self.reach_pending = Gauge(
            "window_reach_pending",
            "State changes not yet in the reach counters",
            [],
            registry=self.registry,
        )
        self.partitions = Gauge(
            "window_partitions", "Partitions this worker owns and serves", registry=self.registry
        )


class PagesReplica:
    """Every page's state, read from the pages changelog (read_committed) and kept current."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.pages: dict[bytes, PageState] = {}
        self._task: asyncio.Task[None] | None = None

    def _apply(self, records: list[Record] | Any) -> None:
        for record in records:
            if record.key is None:
                continue
            if record.value is None:
                self.pages.pop(record.key, None)
            else:
                try:
                    self.pages[record.key] = decode_page_state(record.value)
                except Exception:  # a bad record is the writer's dead letter, not ours to crash on
                    log.warning("pages changelog: undecodable value for %r", record.key)

    async def start(self) -> None:
        """Read to the end once (the worker serves nothing before), then follow in background."""
        consumer = reader(self.bootstrap)
        await consumer.start()
        tps = [TopicPartition(self.topic, n) for n in range(self.partitions)]
        try:
            await read_to_end(consumer, dict.fromkeys(tps), self._apply)
        except BaseException:
            await consumer.stop()
            raise
        for tp in tps:
            consumer.resume(tp)
        self._task = asyncio.create_task(self._follow(consumer), name="pages replica")

    async def _follow(self, consumer: Any) -> None:
        try:
            while True:
                try:
                    fetched = await consumer.getmany(timeout_ms=500)
                except Exception as exc:  # the broker comes back; so do we
                    log.warning("pages replica: %r; retrying", exc)
                    await asyncio.sleep(1.0)
                    continue
                for records in fetched.values():
                    self._apply(records)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class WindowWorker:
    def __init__(
        self, config: WindowConfig, rules: RuleBook, clock: Callable[[], int] = now_ms
    ) -> None:
        self.config = config
        self.rules = rules
        self.clock = clock
        settings = config.settings
        self.partitions_count = settings.partitions
        self.topics = Topics(settings.topic_prefix)
        self.metrics_ = Metrics()
        self.replica = PagesReplica(
            settings.kafka_bootstrap, config.pages_changelog, self.partitions_count
        )
        self.own_pages: dict[bytes, tuple[int, PageState]] = {}
        self.reach = ReachIndex(rules, self._read_state, clock())
        self.reach.listener = self._on_assessed
        self.shared = WindowShared(
            bootstrap=settings.kafka_bootstrap,
            partitions=self.partitions_count,
            events_topic=self.topics.events,
            requests_topic=self.topics.send_requests,
            decisions_topic=self.topics.decisions,
            dead_letter_topic=self.topics.dead_letter,
            users_changelog=config.users_changelog,
            pages_changelog=config.pages_changelog,
            commands_topic=self.topics.broadcast_commands,
            broadcasts_topic=self.topics.broadcasts,
            broadcasts_changelog=config.broadcasts_changelog,
            rules=rules,
            clock=clock,
            page_lookup=self._page,
            on_committed=self._on_committed,
            freeze_at_request=config.freeze_at_request,
            broadcast_slice=config.broadcast_slice,
            pacer=Pacer(config.broadcast_yield),
        )
        self.runner = PartitionedRunner(
            bootstrap=settings.kafka_bootstrap,
            group=config.app_id,
            topics=[self.topics.events, self.topics.send_requests, self.topics.broadcast_commands],
            url=config.advertised_url,
            make_logic=lambda n: WindowPartition(n, self.shared),
            batch=config.batch,
            session_timeout_ms=int(config.session_timeout_s * 1000),
            hooks=RunnerHooks(on_assigned=self._on_assigned, on_released=self._on_released),
        )
        self._counters: dict[tuple[str, str], Any] = {}
        self._scans: dict[int, asyncio.Task[None]] = {}
        self.web = WebServer(QueryApi(self, settings.api_tokens), config.host, settings.window_port)
        self._stopping = asyncio.Event()

    # ---- life cycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop()`: replica, queries, then the group."""
        await self.web.start()
        try:
            await self.replica.start()
            await self.runner.start()
            runner = asyncio.create_task(self.runner.run(), name="window runner")
            flusher = asyncio.create_task(self._flush_reach_forever(), name="reach flush")
            stopping = asyncio.create_task(self._wait_stop())
            await asyncio.wait({runner, stopping}, return_when=asyncio.FIRST_COMPLETED)
            flusher.cancel()
            stopping.cancel()
            if runner.done():
                runner.result()  # a crashed runner is the worker's failure
            else:
                runner.cancel()
        finally:
            for scan in self._scans.values():
                scan.cancel()
            await self.runner.stop()
            await self.replica.stop()
            await self.web.stop()

    def stop(self) -> None:
        self._stopping.set()

    async def _wait_stop(self) -> None:
        await self._stopping.wait()

    # ---- state views ----------------------------------------------------------------------------

    def _partition_of(self, key: bytes) -> WindowPartition | None:
        n = partition_for(key, self.partitions_count)
        if n not in self.runner.owned():
            return None
        logic = self.runner.logics.get(n)
        return logic if isinstance(logic, WindowPartition) else None

    def _read_state(self, key: bytes) -> UserState | None:
        partition = self._partition_of(key)
        stored = partition.get_user(key) if partition is not None else None
        return None if stored is None else stored.state

    def _page(self, key: bytes) -> PageState | None:
        mine = self.own_pages.get(key)
        return mine[1] if mine is not None else self.replica.pages.get(key)

    def _on_committed(
        self,
        partition: int,
        results: list[Result],
        changed: dict[bytes, UserState],
        pages: dict[bytes, PageState],
    ) -> None:
        for key, page in pages.items():
            self.own_pages[key] = (partition, page)
        for key, state in changed.items():
            self.reach.mark(key, partition, state)
        for result in results:
            kind = "events" if result.outcome in ("folded", "unchanged", "page") else "requests"
            if result.outcome == "command":
                kind = "broadcasts"
            if result.outcome == "dead_letter":
                kind = "any"
                log.warning("dead-lettered a record: %s", result.problem)
            counter = self._counters.get((kind, result.outcome))
            if counter is None:
                counter = self._counters[(kind, result.outcome)] = self.metrics_.records.labels(
                    kind, result.outcome
                )
            counter.inc()
        self.metrics_.batches.inc()

    def _on_assessed(
        self, key: bytes, partition: int, state: UserState, verdicts: list[Verdict], now: int
    ) -> None:
        logic = self.runner.logics.get(partition)
        if isinstance(logic, WindowPartition):
            logic.broadcasts.summarise(key, state, verdicts, now)

    def _on_assigned(self, partitions: set[int]) -> None:
        self.metrics_.partitions.set(len(self.runner.tasks))
        for n in partitions:
            self.reach.drop_partition(n)
            old = self._scans.pop(n, None)
            if old is not None:
                old.cancel()
            self._scans[n] = asyncio.create_task(self._index(n), name=f"reach p{n}")

    def _on_released(self, partitions: set[int]) -> None:
        self.metrics_.partitions.set(len(self.runner.tasks))
        for n in partitions:
            scan = self._scans.pop(n, None)
            if scan is not None:
                scan.cancel()
            self.reach.drop_partition(n)
        for key in [k for k, (n, _) in self.own_pages.items() if n in partitions]:
            del self.own_pages[key]

    async def _index(self, n: int) -> None:
        """Once the partition is restored, count its users into the reach index, in chunks."""
        task = self.runner.tasks.get(n)
        if task is None:
            return
        await task.ready.wait()
        self.metrics_.restore.observe(task.stats.restore_s)
        # The scan is CPU-bound: let every partition finish its restore (and serve) first.
        while waiting := [t for t in self.runner.tasks.values() if not t.ready.is_set()]:
            with contextlib.suppress(TimeoutError):  # re-read: a partition may have gone
                await asyncio.wait_for(waiting[0].ready.wait(), 1.0)
        logic = self.runner.logics.get(n)
        if not isinstance(logic, WindowPartition) or self.runner.tasks.get(n) is not task:
            return
        started = time.monotonic()
        for i, key in enumerate(list(logic.users)):
            raw = logic.users.get(key)  # decoded here without filling the partition's cache
            if raw is not None:
                self.reach.mark(key, n, decode_stored_user(raw).state)
            if i % SCAN_CHUNK == SCAN_CHUNK - 1:
                self.reach.flush(self.clock())
                await asyncio.sleep(0)
        self.reach.flush(self.clock())
        settle_long_lived_objects()
        if self.runner.tasks.get(n) is task:
            self.reach.complete_partition(n)
            log.info(
                "partition %d: %d users (%d changelog records restored in %.2f s), reach indexed "
                "in %.2f s",
                n,
                len(logic.users),
                logic.restored_records,
                logic.restore_s,
                time.monotonic() - started,
            )

    async def _flush_reach_forever(self) -> None:
        settled = time.monotonic()
        while True:
            await asyncio.sleep(self.config.reach_flush_s)
            if time.monotonic() - settled > SETTLE_EVERY_S:  # states written since: long-lived
                settled = time.monotonic()
                settle_long_lived_objects()
            for _ in range(1_000):
                if self.reach.flush(self.clock(), limit=FLUSH_CHUNK) < FLUSH_CHUNK:
                    break
                await asyncio.sleep(0)
            self.metrics_.reach_pending.set(self.reach.pending)

    # ---- the query backend (services.window.web.Backend) ---------------------------------------

    @property
    def self_url(self) -> str:
        return self.config.advertised_url

    @property
    def partitions(self) -> int:
        return self.partitions_count

    def ready(self) -> str | None:
        return self.runner.ready()

    def partition_owners(self) -> Mapping[int, str]:
        return self.runner.owners()

    def owner_of(self, key: bytes) -> str | None:
        return self.partition_owners().get(partition_for(key, self.partitions_count))

    def page_state(self, page_id: str) -> PageState | None:
        return self._page(f"{page_id}:".encode())

    def user_view(self, page_id: str, user_id: str) -> dict[str, Any]:
        key = f"{page_id}:{user_id}".encode()
        partition = self._partition_of(key)
        stored = partition.get_user(key) if partition is not None else None
        return user_view(
            page_id, user_id, stored, self.page_state(page_id), self.clock(), self.rules
        )

    def reach_partials(self, page_id: str) -> dict[int, dict[str, int]]:
        self.reach.flush(self.clock(), limit=FLUSH_CHUNK)
        owned = self.runner.owned()
        partials = self.reach.partials(page_id, self.clock())
        return {p: counts for p, counts in partials.items() if p in owned}

    def reach_view(
        self,
        page_id: str,
        partials: Mapping[int, Mapping[str, int]],
        errors: Mapping[str, str],
    ) -> dict[str, Any]:
        return reach_view(
            page_id, partials, self.partitions_count, self.page_state(page_id), self.clock(), errors
        )

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.metrics_.registry), CONTENT_TYPE_LATEST

    def dry_run_partials(self, spec: BroadcastSpec) -> dict[str, Any]:
        now = self.clock()
        self.reach.flush(now)  # the facts the cheap path reads are the states' latest
        page = self.page_state(spec.page_id)
        total = DryRun()
        for n in sorted(self.runner.owned()):
            logic = self.runner.logics.get(n)
            if not isinstance(logic, WindowPartition) or not logic.broadcasts.index.ready:
                continue  # restoring or indexing: reported missing, never half counted
            part = dry_run_partition(logic.broadcasts, spec, now, logic.peek_state, page)
            total.add(part.wire())
        return total.wire()


async def ensure_changelogs(
    bootstrap: str, names: list[str], partitions: int, replication: int | None = None
) -> None:
    """Create the compacted changelogs up front (a first start never waits on them); refuse
    ones with another partition count: a changelog's partition n holds partition n's state."""
    await ensure_topic_specs(
        bootstrap,
        [
            TopicSpec(
                name,
                configs={"cleanup.policy": "compact"},
                why_keyed="a changelog's partition n holds the state of partition n",
            )
            for name in names
        ],
        partitions,
        replication,
    )


async def ensure_broadcast_topics(
    bootstrap: str, topics: Topics, partitions: int, replication: int | None = None
) -> None:
    """The broadcasts' topics: the commands, co-partitioned with the keyed topics (each command is
    written to every partition, so partition n's fan-out reads it in its own order), and the
    compacted progress topic (`<broadcast_id>:<partition>`, the latest counts of each)."""
    await ensure_topic_specs(
        bootstrap,
        [
            TopicSpec(
                topics.broadcast_commands,
                why_keyed="partition n of the commands is read by the owner of partition n",
            ),
            TopicSpec(topics.broadcasts, keyed=False, configs={"cleanup.policy": "compact"}),
        ],
        partitions,
        replication,
    )
