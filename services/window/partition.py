"""One partition of the window worker: its users' state, and each batch as one transaction.

`WindowPartition` is the window's `PartitionLogic` (see `services.common.partitioned`). It holds
the committed state of its partition's users (the stored-user bytes, exactly as they are in the
changelog) and the pages whose key falls in this partition. A batch is applied through the same
`processing` steps the replay uses, to a working copy; its outputs are the decisions, the
`RequestDecided` events and dead letters, plus one changelog record per user (and page) the batch
changed. Only when the transaction carrying all of them has committed does the working copy
become the state (and the reach index hear of it).

The state is a cache of the changelog: `restore` reads the changelog partition to its end
(read_committed). A partition that was let go cleanly (every batch committed) keeps its state and
catches up from where it stopped; any other (fenced, failed, cancelled) is emptied and read whole.
Nothing is kept on local disk, so no local file can be stale.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from schemas.state import PageState, UserState, decode_page_state, encode_page_state
from services.common.logread import AheadOfLog, Record, read_to_end, reader
from services.common.partitioned import Outgoing
from services.window.broadcasts import Broadcasts, Pacer
from services.window.processing import (
    Output,
    Result,
    Source,
    guarded,
    process_event_record,
    process_request_record,
)
from services.window.store import DecodeCache, StoredUser, decode_stored_user, encode_stored_user
from windowgate.core.rulebook import RuleBook

log = logging.getLogger(__name__)

MAX_ECHOES = 100_000
"""Own `RequestDecided` values remembered until read back (a broadcast writes one per recipient)."""

ECHO = Result("unchanged")
"""What reading back an own `RequestDecided` does: nothing. The state absorbed the decision in the
transaction that wrote the event (fold is idempotent: folding it again would change nothing), so
the decode, the state lookup and the fold are skipped: half of a broadcast recipient's cost."""

INDEX_CHUNK = 5_000
"""Restored users indexed for the broadcasts per turn (a few tens of ms: webhooks wait no more)."""

CACHE_USERS = 4_000
"""Decoded states kept per partition for the users most recently touched (memory vs. CPU)."""


@dataclass
class WindowShared:
    """What every partition of one worker shares: configuration and the worker-wide views."""

    bootstrap: str
    partitions: int
    events_topic: str
    requests_topic: str
    decisions_topic: str
    dead_letter_topic: str
    users_changelog: str
    pages_changelog: str
    rules: RuleBook
    clock: Callable[[], int]
    page_lookup: Callable[[bytes], PageState | None]
    """The page state as this worker knows it: its own committed writes, else the replica."""
    on_committed: Callable[
        [int, list[Result], dict[bytes, UserState], dict[bytes, PageState]], None
    ]
    """Told after each committed batch: partition, step results, changed users and pages."""
    restore_timeout_s: float = 300.0
    commands_topic: str = ""
    """`<prefix>broadcast-commands` (empty: this worker runs no broadcasts)."""
    broadcasts_topic: str = ""
    """`<prefix>broadcasts`: each partition's `BroadcastProgress`, compacted."""
    broadcasts_changelog: str = ""
    """`<app id>-broadcasts-changelog`: the partition's broadcasts and recipients."""
    broadcast_slice: int | None = None
    """Keys a broadcast's slice walks per turn (None: `broadcasts.SLICE_USERS`)."""
    pacer: Pacer = field(default_factory=lambda: Pacer(0.0))
    """The worker's one pacer of slices (WINDOW_BROADCAST_YIELD)."""
    freeze_at_request: str | None = None
    """Test hook (WINDOW_FREEZE_AT_REQUEST): SIGSTOP this process once a batch has decided this
    request, before its transaction, as a GC pause or a frozen VM would stop it."""


@dataclass
class _Batch:
    users: dict[bytes, StoredUser] = field(default_factory=dict)
    pages: dict[bytes, PageState] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    written_events: list[bytes] = field(default_factory=list)
    encoded: dict[bytes, bytes] = field(default_factory=dict)


class _BatchTables:
    """`processing.Tables` over the committed state plus the batch's working copy."""

    def __init__(self, partition: WindowPartition, batch: _Batch) -> None:
        self.partition = partition
        self.batch = batch

    def get_user(self, key: bytes) -> StoredUser | None:
        working = self.batch.users.get(key)
        return working if working is not None else self.partition.get_user(key)

    def put_user(self, key: bytes, stored: StoredUser) -> None:
        self.batch.users[key] = stored

    def get_page(self, key: bytes) -> PageState | None:
        working = self.batch.pages.get(key)
        if working is not None:
            return working
        mine = self.partition.pages.get(key)
        return mine if mine is not None else self.partition.shared.page_lookup(key)

    def put_page(self, key: bytes, state: PageState) -> None:
        self.batch.pages[key] = state


def freeze_if_asked(request_id: str, result: Result) -> None:
    """The WINDOW_FREEZE_AT_REQUEST test hook: stop here, mid-batch, until SIGCONT."""
    for output in result.outputs:
        if output.topic == "decisions" and request_id.encode() in output.value:
            log.warning("WINDOW_FREEZE_AT_REQUEST=%s: SIGSTOP before the commit", request_id)
            os.kill(os.getpid(), signal.SIGSTOP)
            return


class WindowPartition:
    def __init__(self, number: int, shared: WindowShared) -> None:
        self.number = number
        self.shared = shared
        self.users: dict[bytes, bytes] = {}
        self.pages: dict[bytes, PageState] = {}
        self.cache = DecodeCache(CACHE_USERS)
        self.positions: dict[TopicPartition, int] = {}
        self.keep = False
        self.restored_records = 0
        self.restore_s = 0.0
        self._batch: _Batch | None = None
        self.broadcasts = Broadcasts(number, shared.partitions, shared.rules)
        self._unindexed: list[bytes] = []
        self._sliced_on_input = False
        self._echoes: dict[bytes, bool] = {}
        """The `RequestDecided` values this partition committed and has not yet read back."""
        self._topics = {
            "events": shared.events_topic,
            "decisions": shared.decisions_topic,
            "dead_letter": shared.dead_letter_topic,
        }

    # ---- reading ------------------------------------------------------------------------------

    def get_user(self, key: bytes) -> StoredUser | None:
        raw = self.users.get(key)
        return None if raw is None else self.cache.decode(key, raw)

    def peek_state(self, key: bytes) -> UserState | None:
        """The user's committed state, decoded without filling the cache (a dry run reads many
        users once; the cache is for the hot ones)."""
        raw = self.users.get(key)
        return None if raw is None else decode_stored_user(raw).state

    # ---- PartitionLogic -------------------------------------------------------------------------

    async def restore(self) -> None:
        started = time.monotonic()
        shared = self.shared
        tps = [
            TopicPartition(shared.users_changelog, self.number),
            TopicPartition(shared.pages_changelog, self.number),
        ]
        if shared.broadcasts_changelog:
            tps.append(TopicPartition(shared.broadcasts_changelog, self.number))
        if not self.keep:
            self._forget()
        self.keep = False
        self.restored_records = 0
        consumer = reader(shared.bootstrap)
        await consumer.start()
        try:
            try:
                self.positions = await read_to_end(
                    consumer,
                    {tp: self.positions.get(tp) for tp in tps},
                    self._apply_changelog,
                    shared.restore_timeout_s,
                )
            except AheadOfLog:  # not the log this state came from: read it whole
                self._forget()
                self.positions = await read_to_end(
                    consumer, dict.fromkeys(tps), self._apply_changelog, shared.restore_timeout_s
                )
        finally:
            await consumer.stop()
        self.restore_s = time.monotonic() - started
        self.restored()

    def restored(self) -> None:
        """The changelogs are read: the restored users are indexed for the broadcasts in turns of
        their own, and every walk restarts from its committed cursor."""
        self._unindexed = list(self.users)
        self.broadcasts.index.ready = not self._unindexed
        self.broadcasts.restart_walks()

    def _forget(self) -> None:
        self.users = {}
        self.pages = {}
        self.cache.clear()
        self.positions = {}
        self.broadcasts.forget()
        self._unindexed = []
        self._echoes = {}

    def _apply_changelog(self, records: Sequence[Record]) -> None:
        users_topic = self.shared.users_changelog
        for record in records:
            key = record.key
            if key is None:
                continue
            if record.topic == self.shared.broadcasts_changelog:
                self.broadcasts.apply_changelog(key, record.value)
            elif record.topic == users_topic:
                if record.value is None:
                    self.users.pop(key, None)
                else:
                    self.users[key] = record.value
            elif record.value is None:
                self.pages.pop(key, None)
            else:
                self.pages[key] = decode_page_state(record.value)
        self.restored_records += len(records)

    def process(self, records: Sequence[Record]) -> list[Outgoing]:
        shared = self.shared
        batch = self._batch = _Batch()
        tables = _BatchTables(self, batch)
        now = shared.clock()
        outputs: list[Outgoing] = []
        broadcasts = self.broadcasts
        broadcasts.begin()
        if not broadcasts.index.ready:
            self._index_some(INDEX_CHUNK)
        for record in records:
            source = Source(record.topic, record.partition, record.offset)
            if record.topic == shared.commands_topic:
                result = self._command(record.key, record.value, source, now)
            elif record.topic == shared.requests_topic:
                result = process_request_record(
                    tables, record.key, record.value, source, now, shared.rules, shared.partitions
                )
            else:
                if record.value is not None and self._echoes.pop(record.value, False):
                    result = ECHO  # our own RequestDecided, read back: folded when it was written
                else:
                    result = process_event_record(
                        tables,
                        record.key,
                        record.value,
                        source,
                        now,
                        shared.partitions,
                        shared.rules,
                    )
                    broadcasts.event(record.key, record.value, now)
            batch.results.append(result)
            outputs.extend(self._outgoing(o) for o in result.outputs)
            if shared.freeze_at_request is not None and result.outcome == "decided":
                freeze_if_asked(shared.freeze_at_request, result)
        if (
            broadcasts.wants_turn(now) == 0
            and shared.pacer.wait() == 0
            and (not records or not self._sliced_on_input)
        ):
            # An idle turn is a slice; under steady input one batch in two carries one, so the
            # fan-out goes on and a webhook never waits behind more than one slice.
            emit = lambda result: self._emit(result, outputs)  # noqa: E731
            started = time.monotonic()
            broadcasts.slice(tables, now, emit, shared.broadcast_slice)
            shared.pacer.spent(time.monotonic() - started)
            self._sliced_on_input = bool(records)
        else:
            self._sliced_on_input = False
        changelog, progress = broadcasts.records()
        outputs += [Outgoing(shared.broadcasts_changelog, k, v, self.number) for k, v in changelog]
        outputs += [Outgoing(shared.broadcasts_topic, k, v) for k, v in progress]
        for key, stored in batch.users.items():
            raw = batch.encoded[key] = encode_stored_user(stored)
            outputs.append(Outgoing(shared.users_changelog, key, raw, self.number))
        for key, page in batch.pages.items():
            outputs.append(
                Outgoing(shared.pages_changelog, key, encode_page_state(page), self.number)
            )
        return outputs

    def _command(self, key: bytes | None, value: bytes | None, source: Source, now: int) -> Result:
        def step() -> Result:
            if value is None:
                return Result("command", problem="no value")
            did = self.broadcasts.command(value, now)
            log.info("partition %d: broadcast command: %s", self.number, did)
            return Result("command", problem=did)

        return guarded(step, key, value, source, now)

    def _emit(self, result: Result, outputs: list[Outgoing]) -> None:
        batch = self._batch
        assert batch is not None
        batch.results.append(result)
        outputs.extend(self._outgoing(o) for o in result.outputs)
        if self.shared.freeze_at_request is not None:
            freeze_if_asked(self.shared.freeze_at_request, result)

    def wants_turn(self) -> float | None:
        if not self.broadcasts.index.ready:
            return 0.0  # the restored users still to index: a turn of their own
        wants = self.broadcasts.wants_turn(self.shared.clock())
        return max(wants, self.shared.pacer.wait()) if wants == 0 else wants

    def _index_some(self, limit: int) -> None:
        """Index up to `limit` restored users for the broadcasts (their committed state; what a
        batch changes is indexed when it commits); the last chunk makes the index ready."""
        pending = self._unindexed
        for _ in range(min(limit, len(pending))):
            key = pending.pop()
            raw = self.users.get(key)
            if raw is not None:
                self.broadcasts.index_user(key, decode_stored_user(raw).state)
        if not pending:
            self.broadcasts.index.ready = True

    def _outgoing(self, output: Output) -> Outgoing:
        if output.topic == "events" and self._batch is not None:
            self._batch.written_events.append(output.value)
        return Outgoing(self._topics[output.topic], output.key, output.value)

    def committed(self, written: Mapping[TopicPartition, int]) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        echoes = self._echoes
        for value in batch.written_events:
            echoes[value] = True
        while len(echoes) > MAX_ECHOES:  # read back long ago, or never: fold them then
            del echoes[next(iter(echoes))]
        for tp in self.positions:  # only this partition's producer writes its changelogs
            if tp in written:
                self.positions[tp] = max(self.positions[tp], written[tp])
        for key, raw in batch.encoded.items():
            self.users[key] = raw
            self.cache.remember(key, raw, batch.users[key])
        self.pages.update(batch.pages)
        changed = {key: stored.state for key, stored in batch.users.items()}
        self.broadcasts.committed(changed)
        self.shared.on_committed(self.number, batch.results, changed, batch.pages)

    def rolled_back(self) -> None:
        self._batch = None
        self.broadcasts.rolled_back()

    def released(self, clean: bool) -> None:
        self._batch = None
        self.broadcasts.rolled_back()
        self.keep = clean
        if not clean:
            self._forget()
