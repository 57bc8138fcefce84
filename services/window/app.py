"""The faust app of the window worker: tables, two agents, the reach index and the query server.

- `users` (Table, partitioned like the keyed topics): `"<page_id>:<user_id>"` → stored user
  (`store.encode_stored_user`). RocksDB by default, with its changelog
  `<app id>-users-changelog`: a restart recovers from the local files plus the changelog's tail,
  a lost data dir from the changelog alone.
- `pages` (GlobalTable): `"<page_id>:"` → `PageState`. Page blocks are needed by the requests of
  users in every partition; pages are few and change rarely, so every worker holds them all.
  Written only by the owner of the page key's partition, like any key, so there is one writer.
- agent `events`: each record through `processing.process_event_record`.
- agent `send-requests`: each record through `processing.process_request_record`.

The agents are loops over those functions and nothing else. A step reads, computes and writes
without awaiting, so no other step (of either agent) can interleave on a user; faust's copartition
assignment gives `events`, `send-requests` and both changelogs' same-numbered partitions to the
same worker, so exactly one process writes a user at any time (I1).

Processing guarantee: at-least-once, on purpose. faust's `exactly_once` (Kafka transactions) has
open bug reports (stuck recoveries, aborted-transaction hangs; DESIGN.md §6). At-least-once is
safe here because a redelivered record changes nothing: folds are idempotent (I2), a redelivered
request is recognised by its offset and re-emits its first decision without deciding again (I3,
see `processing`), and faust flushes every produced record (changelog, decisions, events) before
it commits the offsets of the records that caused them. One hole in faust's at-least-once is
plugged here: records dropped during a rebalance in a partition that has no committed offset yet
were skipped for good (`RewindingConsumer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, ClassVar, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from schemas.state import PageState, UserState
from services.common.runtime import now_ms
from services.common.topics import Topics
from services.window.config import PAGES_TABLE, USERS_TABLE, WindowConfig
from services.window.processing import (
    Output,
    Result,
    Source,
    partition_for,
    process_event_record,
    process_request_record,
)
from services.window.queries import reach_view, user_view
from services.window.reach import ReachIndex
from services.window.store import DecodeCache, ReplicatedPageTables
from services.window.web import QueryApi, WebServer
from windowgate.rulebook import RuleBook

log = logging.getLogger(__name__)

ROCKSDB_OPTIONS = {
    # faust's defaults (2 GiB block cache, 3 x 64 MiB write buffers per partition) are sized for
    # a machine per worker; these keep eight partitions of a small worker in a few hundred MiB.
    "block_cache_size": 64 * 1024 * 1024,
    "write_buffer_size": 16 * 1024 * 1024,
    "max_write_buffer_number": 2,
}
PRODUCER_LINGER_S = 0.01
SCAN_CHUNK = 1_000
FLUSH_CHUNK = 2_000


class RewindingConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, rewinding never-committed source partitions to their start.

    faust drops records it fetched while a rebalance stops the flow, and then seeks back to the
    committed offsets; aiokafka's `seek_to_committed` moves only partitions with a committed
    offset above 0. A partition nobody ever committed therefore stays *past* the dropped records,
    which are never seen again: a send request lost (we saw it after a kill -9 of the worker that
    had just decided a partition's first request). Rewinding those partitions to their first
    offset restores `auto_offset_reset=earliest`; what was processed already comes back as a
    redelivery, which the steps handle (see `processing`).
    """

    rewind_topics: ClassVar[frozenset[str]] = frozenset()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        rewind = [tp for tp, at in committed.items() if not at and tp.topic in self.rewind_topics]
        if rewind:
            log.info("rewinding never-committed partitions to their start: %s", sorted(rewind))
            await self._thread.seek_to_beginning(*rewind)
        return committed


def rewinding_transport(app: faust.App, topics: frozenset[str]) -> faust_aiokafka.Transport:
    """An aiokafka transport for `app` whose consumer rewinds `topics` (see RewindingConsumer)."""
    consumer = type("WindowConsumer", (RewindingConsumer,), {"rewind_topics": topics})
    transport = type("WindowTransport", (faust_aiokafka.Transport,), {"Consumer": consumer})
    made: faust_aiokafka.Transport = transport(app.conf.broker_consumer, app)
    return made


class Metrics:
    """Prometheus metrics of one worker (its own registry: tests build several apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records = Counter(
            "window_records",
            "Records processed, by source topic kind and outcome",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.reach_pending = Gauge(
            "window_reach_pending",
            "State changes not yet in the reach counters",
            [],
            registry=self.registry,
        )


def _bytes_table(table: Any) -> MutableMapping[bytes, bytes]:
    return cast(MutableMapping[bytes, bytes], table)


class WindowWorker:
    """One window worker: builds the faust app and binds `processing` to it."""

    def __init__(
        self,
        config: WindowConfig,
        rules: RuleBook,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config
        self.rules = rules
        self.clock = clock
        settings = config.settings
        self.partitions_count = settings.partitions
        self.topics = Topics(settings.topic_prefix)
        self.metrics_ = Metrics()
        self._counters: dict[tuple[str, str], Any] = {}
        self.app = self._build_app()
        sources = frozenset({self.topics.events, self.topics.send_requests})
        self.app.transport = rewinding_transport(self.app, sources)
        self.users = self.app.Table(
            USERS_TABLE,
            partitions=self.partitions_count,
            key_type=bytes,
            value_type=bytes,  # bytes: faust's "raw" codec, our own encoding
            options=dict(ROCKSDB_OPTIONS),
            extra_topic_configs=config.changelog_configs,  # min.insync.replicas of the changelog
            help="per-user state, keyed <page_id>:<user_id>",
        )
        self.pages = self.app.GlobalTable(
            PAGES_TABLE,
            partitions=self.partitions_count,
            key_type=bytes,
            value_type=bytes,  # bytes: faust's "raw" codec, our own encoding
            options=dict(ROCKSDB_OPTIONS),
            extra_topic_configs=config.changelog_configs,
            help="page-wide state, keyed <page_id>:",
            # Apply each update of another worker's pages as it arrives: with the default (1,000)
            # faust buffers them after recovery until a thousand have come (faust issue #212).
            recovery_buffer_size=1,
        )
        self.tables = ReplicatedPageTables(
            _bytes_table(self.users), _bytes_table(self.pages), DecodeCache()
        )
        self.reach = ReachIndex(rules, self._read_state, clock())
        self._scanning: set[int] = set()
        self._out = {
            "events": self._topic(self.topics.events),
            "decisions": self._topic(self.topics.decisions),
            "dead_letter": self._topic(self.topics.dead_letter),
        }
        self.sink: Callable[[Output], None] = self._send_soon
        """Where outputs go: faust's producer buffer (flushed before offsets are committed)."""
        self._define_agents()
        self.users.on_recover(self._on_users_recovered)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.timer(config.reach_flush_s, name="window-reach-flush")(self._flush_reach)
        api = QueryApi(self, settings.api_tokens)
        self.app.web_server(
            WebServer(api, config.host, settings.window_port, loop=None, beacon=None)
        )

    # ---- construction ----------------------------------------------------------------------------

    def _build_app(self) -> faust.App:
        config = self.config
        bootstrap = config.settings.kafka_bootstrap
        return faust.App(
            config.app_id,
            broker=[f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()],
            store=config.store,
            datadir=str(config.data_dir),
            processing_guarantee="at_least_once",
            topic_partitions=self.partitions_count,
            topic_replication_factor=config.replication_factor,
            topic_disable_leader=True,
            table_standby_replicas=config.standby_replicas,
            canonical_url=config.advertised_url,
            web_enabled=True,
            autodiscover=False,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=config.session_timeout_s,
            broker_heartbeat_interval=min(1.0, config.session_timeout_s / 3),
            broker_commit_interval=1.0,
            # Batch produce requests for up to 10 ms: one request per changelog record costs the
            # worker more CPU in aiokafka's request/response handling than the fold itself
            # (measured: 4,600 -> 7,300 table writes/s for a bare faust agent).
            producer_linger=PRODUCER_LINGER_S,
        )

    def _topic(self, name: str) -> faust.TopicT:
        return self.app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.partitions_count,
        )

    def _define_agents(self) -> None:
        events = self._topic(self.topics.events)
        requests = self._topic(self.topics.send_requests)

        async def fold_events(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                self.on_event(event)

        async def decide_requests(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                self.on_request(event)

        self.events_agent = self.app.agent(events, name="window-events")(fold_events)
        self.requests_agent = self.app.agent(requests, name="window-send-requests")(decide_requests)

    # ---- the agents' steps -----------------------------------------------------------------------

    def on_event(self, event: EventT[bytes]) -> Result:
        message = event.message
        source = Source(message.topic, message.partition, message.offset)
        result = process_event_record(
            self.tables, message.key, message.value, source, self.clock(), self.partitions_count
        )
        self._emit("events", result, message.key, source)
        return result

    def on_request(self, event: EventT[bytes]) -> Result:
        message = event.message
        source = Source(message.topic, message.partition, message.offset)
        result = process_request_record(
            self.tables,
            message.key,
            message.value,
            source,
            self.clock(),
            self.rules,
            self.partitions_count,
        )
        self._emit("send_requests", result, message.key, source)
        return result

    def _send_soon(self, output: Output) -> None:
        self._out[output.topic].send_soon(key=output.key, value=output.value)

    def _emit(self, kind: str, result: Result, key: bytes | None, source: Source) -> None:
        for output in result.outputs:
            self.sink(output)
        if result.changed is not None and key is not None:
            self.reach.mark(key, source.partition, result.changed)
        if result.problem is not None:
            log.warning(
                "dead-lettered a record: %s", result.problem, extra={"source": source.describe(key)}
            )
        counter = self._counters.get((kind, result.outcome))
        if counter is None:
            counter = self._counters[(kind, result.outcome)] = self.metrics_.records.labels(
                kind, result.outcome
            )
        counter.inc()

    # ---- reach index -----------------------------------------------------------------------------

    def _read_state(self, key: bytes) -> UserState | None:
        stored = self.tables.get_user(key)
        return None if stored is None else stored.state

    async def _flush_reach(self) -> None:
        for _ in range(1_000):  # at most 2 M changes per tick; the rest waits for the next one
            if self.reach.flush(self.clock(), limit=FLUSH_CHUNK) < FLUSH_CHUNK:
                break
            await asyncio.sleep(0)
        self.metrics_.reach_pending.set(self.reach.pending)

    def _active_partitions(self) -> set[int]:
        changelog = self.config.users_changelog
        return {
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == changelog
        }

    async def _on_assigned(
        self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        """At every assignment (even one whose recovery a next rebalance interrupts): forget the
        reach counts of partitions this worker no longer owns (one that leaves and comes back is
        counted afresh, never from counts that missed its absence), and the pages it wrote (a new
        owner starts from the recovered replica)."""
        assigned: set[TP] = args[0] if args else set()
        self.tables.forget_written_pages()
        kept = {tp.partition for tp in assigned if tp.topic == self.topics.events}
        for partition in self.reach.partitions - kept:
            self.reach.drop_partition(partition)

    async def _on_users_recovered(self) -> None:
        active = self._active_partitions()
        for partition in self.reach.partitions - active:
            self.reach.drop_partition(partition)
        fresh = active - self.reach.complete - self._scanning
        if fresh:
            self._scanning |= fresh
            self.app.add_future(self._scan(fresh))

    async def _scan(self, partitions: set[int]) -> None:
        """Index every user of newly owned partitions, a chunk at a time (the loop stays live)."""
        try:
            keys = [k for k in list(self.users.keys()) if isinstance(k, bytes)]
            for i, key in enumerate(keys):
                partition = partition_for(key, self.partitions_count)
                if partition in partitions:
                    state = self._read_state(key)
                    if state is not None:
                        self.reach.mark(key, partition, state)
                if i % SCAN_CHUNK == SCAN_CHUNK - 1:
                    self.reach.flush(self.clock())
                    await asyncio.sleep(0)
            self.reach.flush(self.clock())
            active = self._active_partitions()
            for partition in partitions & active:
                self.reach.complete_partition(partition)
            log.info("reach index ready for partitions %s", sorted(partitions & active))
        finally:
            self._scanning -= partitions

    # ---- the query backend (services.window.web.Backend) ---------------------------------------

    @property
    def self_url(self) -> str:
        return self.config.advertised_url

    @property
    def partitions(self) -> int:
        return self.partitions_count

    def ready(self) -> str | None:
        if self.app.rebalancing:
            return "the workers are rebalancing partitions"
        if self.app.in_recovery:
            return "this worker is recovering its tables"
        return None

    def partition_owners(self) -> Mapping[int, str]:
        changelog = self.config.users_changelog
        owners: dict[int, str] = {}
        for url, topics in self.app.router.table_metadata(USERS_TABLE).items():
            for partition in topics.get(changelog, ()):
                owners[partition] = str(url).rstrip("/")
        return owners

    def owner_of(self, key: bytes) -> str | None:
        return self.partition_owners().get(partition_for(key, self.partitions_count))

    def page_state(self, page_id: str) -> PageState | None:
        return self.tables.get_page(f"{page_id}:".encode())

    def user_view(self, page_id: str, user_id: str) -> dict[str, Any]:
        stored = self.tables.get_user(f"{page_id}:{user_id}".encode())
        return user_view(
            page_id, user_id, stored, self.page_state(page_id), self.clock(), self.rules
        )

    def reach_partials(self, page_id: str) -> dict[int, dict[str, int]]:
        self.reach.flush(self.clock(), limit=FLUSH_CHUNK)  # the timer drains any larger backlog
        active = self._active_partitions()
        partials = self.reach.partials(page_id, self.clock())
        return {p: counts for p, counts in partials.items() if p in active}

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
