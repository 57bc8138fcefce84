"""`python -m bench.window [--quick]`: the window worker on a real broker, beside references.

The worker (`python -m services.window worker`, its own process) is the fenced transactional
processor: per partition a transactional producer, one transaction per batch holding the batch's
outputs, its changelog records and its input offsets; state in memory, restored from the compacted
changelog on every partition acquisition. Every figure is printed next to a reference measured in
the same run, on the same machine and data, so a slow or busy machine shows as a slow reference
too. Nothing is asserted about speed: targets are printed with "met" / "NOT met".

1. Fold throughput. A backlog of events is produced first; then one worker folds it. The rate
   comes from the worker's own counter (`window_records_total`, /metrics), from its first folded
   event to its last. Reference: a bare aiokafka loop in this process over the same events, with
   the same transactional batching: read_committed consumer, one transactional producer, one
   transaction per batch (<= WINDOW_BATCH records of one partition) holding the changed states and
   the batch's offsets (send_offsets_to_transaction). Also per CPU-second of each process, the
   steadier comparison when neighbours share the cores. The faust worker's figure from the last
   run before this rewrite is printed as a historical line (no faust code runs).
2. Latency at a fixed load (2,000 events/s, open loop: measured from each event's scheduled send
   time, so a worker that falls behind pays for its queue). "Visible" = the worker's changelog
   record for that user is readable by a read_committed consumer here (its transaction
   committed). Reference: the same consumer reading the event itself back from the events topic.
3. Decisions. Users are set up by events (an open window; an OTN token with the window closed;
   neither), the worker is stopped, a backlog of requests is produced (a third each: in window,
   OTN by topic, refused), a new worker decides it. Rate from its counters (source "requests");
   the decisions are read back to check the mix. Reference: the bare transactional loop over the
   same requests, starting from the same users' states, with the worker's request step
   (`process_request_record`: decide, fold, the decision and its event), its own output topics.
4. Failover. Two workers split the partitions; one is killed (SIGKILL); requests for users of
   every partition are produced at once. Time from the kill to the first decision on a partition
   that moved (the group waits WINDOW_SESSION_TIMEOUT_S, default 10 s, for the dead member), and
   to the last; reference: the first decision on a partition that stayed.
5. Rebuild (`windowgate replay`'s fold) of the rebuild users from their events; reference: reading
   the same topic to its end without folding.
6. Restore. The rebuilt users' states are written straight to a fresh worker's changelog (a
   plain idempotent producer, `encode_stored_user`, as the worker would have written them). A
   worker starts on it (first start), is killed with SIGKILL, a new one starts: the time until
   /healthz is 200 and a sample of users across every partition is served.
7. Memory: the restored worker's RSS (/proc/<pid>/status VmRSS, once its reach index has counted
   every user) minus an empty worker's, per user, beside the stored value per user; extrapolated to
   5 M users on one worker's partitions.

The broker is KAFKA_BOOTSTRAP_SERVERS, else a LocalKafka started (and stopped) here. The figures
also go to `bench/results/window-<UTC date and time>.json` (`window-scale-...` for --scale).

    python -m bench.window            # full run: under 10 minutes (3 M events, 1 M users)
    python -m bench.window --quick    # about 2 minutes, smaller inputs
    python -m bench.window --scale    # phases 5-7 at 10 k, 100 k and 1 M users, then 2 workers
                                      # beside one on 16 partitions (docs/scaling.md's check)
    python -m bench.window --broadcast [--broadcast-users 100000,1000000]
                                      # a broadcast's fan-out and dry run (see `broadcast_async`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.results import Figure, print_table, shown, write_results
from devtools.devbroker import LocalKafka, free_port, unique_name
from devtools.window_harness import WindowProcess
from schemas.broadcast import (
    Audience,
    BroadcastCommand,
    BroadcastSpec,
    CommandKind,
    decode_progress,
    encode_command,
)
from schemas.codec import to_wire
from schemas.decision import decode_decision_record
from schemas.events import (
    Event,
    MessageDelivered,
    MessageEcho,
    MessageRead,
    MessageReceived,
    OtnOptin,
    PostbackReceived,
    decode_event,
    encode_event,
)
from schemas.request import SendRequest, encode_request
from schemas.state import PageState
from schemas.topics import Topics
from services.common.logread import Record, reader
from services.common.logread import read_to_end as read_partitions
from services.common.topics import ensure_topics
from services.window.config import PAGES_TABLE, USERS_TABLE, WindowConfig, changelog_topic
from services.window.processing import (
    Output,
    Source,
    apply_event,
    partition_for,
    process_request_record,
)
from services.window.replay import read_to_end, rebuild
from services.window.store import StoredUser, decode_stored_user, encode_stored_user
from services.window.web import DRY_RUN_PATH, SERVED_BY_HEADER
from services.window.worker import ensure_broadcast_topics, ensure_changelogs
from windowgate.core.rulebook import RuleBook, load_rules
from windowgate.core.timeconst import DAY_MS, HOUR_MS
from windowgate.core.transition import apply_event as fold_event

PARTITIONS = 8
RATE = 2_000
"""The fixed load of the latency target, events/s."""
BATCH = WindowConfig.batch
"""Records per partition per transaction: the worker's default (WINDOW_BATCH)."""
PAGES = ("682498171943165", "542998526103632")
TOPICS = ("back-in-stock:adidas-sl72", "price-drop:adidas-sl72", "restock:nike-air-max-90")
FAUST_HISTORICAL = (3_444, 0.11)
"""The faust worker's fold rate and its ratio to that bench's bare loop (which had no
transactions), as last measured by the faust version of this bench. Printed for history only: not
re-measured, and the ratio is to another reference than today's."""
GIB = 1024**3
POLL_S = 0.05
"""How often the worker's counters are read while it works through a backlog."""
SAMPLE_USERS = 64
"""Users queried to call a restored worker "serving"."""


@dataclass(frozen=True)
class Sizes:
    fold_events: int
    latency_s: float
    requests: int
    failover_users: int
    rebuild_users: int
    rebuild_events: int


FULL = Sizes(
    fold_events=300_000,
    latency_s=15.0,
    requests=90_000,
    failover_users=400,
    rebuild_users=1_000_000,
    rebuild_events=3_000_000,
)
QUICK = Sizes(
    fold_events=80_000,
    latency_s=5.0,
    requests=24_000,
    failover_users=160,
    rebuild_users=100_000,
    rebuild_events=300_000,
)


# ---- inputs ------------------------------------------------------------------------------------


def user_id(n: int) -> str:
    return str(1_000_000_000_000_000 + n * 7_919)


def _user_events(rng: random.Random, n: int, count: int, start: int) -> list[Event]:
    """A few events of one user over two days, as a busy page sees them: a message, the page's
    answer (echo, delivery, read), now and then a postback or an OTN opt-in."""
    page = PAGES[n % 2]
    user = user_id(n)
    ts = start + rng.randrange(2 * DAY_MS)
    kinds = ["message", "delivery", "read", "echo", "optin", "postback"]
    weights = [30, 20, 20, 15, 10, 5]
    events: list[Event] = []
    for i in range(count):
        ts += rng.randrange(1, 3 * HOUR_MS)
        kind = "message" if i == 0 else rng.choices(kinds, weights)[0]
        mid = f"m_{n:09d}_{i:02d}_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_QPpz5jdCK48PnKAjSdjfipqxqMvK8ma6A"
        if kind == "message":
            events.append(
                MessageReceived(page_id=page, user_id=user, timestamp=ts, mid=mid, text="hi")
            )
        elif kind == "delivery":
            events.append(
                MessageDelivered(page_id=page, user_id=user, timestamp=ts, watermark=ts - 500)
            )
        elif kind == "read":
            events.append(MessageRead(page_id=page, user_id=user, timestamp=ts, watermark=ts - 500))
        elif kind == "echo":
            events.append(
                MessageEcho(
                    page_id=page, user_id=user, timestamp=ts, mid=mid, app_id="1517776481860111"
                )
            )
        elif kind == "optin":
            token = f"{n:012d}{i:02d}" + "Qk9UTl9UT0tFTl9WQUxVRQ"
            topic = rng.choice(TOPICS)
            events.append(
                OtnOptin(page_id=page, user_id=user, timestamp=ts, token=token, topic=topic)
            )
        else:
            events.append(
                PostbackReceived(page_id=page, user_id=user, timestamp=ts, payload="GET_STARTED")
            )
    return events


def traffic(
    users: int, events: int, seed: int, start: int, time_ordered: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of `events` events spread over `users` users (at least one each).

    `time_ordered` interleaves the users as a live page does (sorted by timestamp, so the
    worker rarely sees one user twice in a row); otherwise user by user (cheaper to generate,
    used for the rebuild, whose speed does not depend on the order)."""
    rng = random.Random(seed)
    extra = events - users

    def per_user() -> Iterator[Event]:
        for n in range(users):
            count = 1 + (extra * (n + 1) // users - extra * n // users)
            yield from _user_events(rng, n, count, start)

    stream: Iterator[Event] = per_user()
    if time_ordered:
        stream = iter(sorted(per_user(), key=lambda e: e.timestamp))
    for event in stream:
        yield event.key.encode(), encode_event(event)


MIX = ("window", "otn", "refused")
"""The decision classes, user n of the decision phase is of class MIX[n % 3]."""


def decision_user(n: int) -> str:
    return f"decide-{n}"


def decision_setup(users: int, now: int) -> Iterator[tuple[bytes, bytes]]:
    """The events that make user n's class: a message an hour ago (window open), or three days
    ago with an OTN opt-in for TOPICS[0] (window closed, token), or three days ago alone."""
    for n in range(users):
        kind = MIX[n % 3]
        user = decision_user(n)
        at = now - HOUR_MS if kind == "window" else now - 3 * DAY_MS
        events: list[Event] = [
            MessageReceived(page_id=PAGES[0], user_id=user, timestamp=at, mid=f"d{n}")
        ]
        if kind == "otn":
            events.append(
                OtnOptin(
                    page_id=PAGES[0], user_id=user, timestamp=at + 1, token=f"t{n}", topic=TOPICS[0]
                )
            )
        for event in events:
            yield event.key.encode(), encode_event(event)


def decision_request(n: int, user: str) -> tuple[bytes, bytes]:
    """`purpose: auto`, naming the OTN topic for the token holders: window, OTN, or a refusal."""
    request = SendRequest(
        request_id=f"req-{user}-{n}",
        page_id=PAGES[0],
        user_id=user,
        topic=TOPICS[0] if MIX[n % 3] == "otn" else None,
        message={"text": "Your size is back in stock"},
    )
    return request.key.encode(), encode_request(request)


async def produce(
    bootstrap: str, topic: str, records: Iterator[tuple[bytes, bytes]], total: int
) -> float:
    """Produce everything (idempotent, acks=all, batched, Kafka's default partitioner: the
    partition of a key is `partition_for(key)`); returns the seconds it took."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    started = time.monotonic()
    try:
        pending = []
        for i, (key, value) in enumerate(records, start=1):
            pending.append(await producer.send(topic, key=key, value=value))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
                _progress(f"producing {topic}", i, total)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    _progress(f"producing {topic}", total, total, final=True)
    return time.monotonic() - started


def _progress(label: str, done: int, total: int, final: bool = False) -> None:
    if sys.stderr.isatty():
        end = "\n" if final else ""
        sys.stderr.write(f"\r{label}: {done:,}/{total:,}\x1b[K{end}")
        sys.stderr.flush()
    elif final:
        sys.stderr.write(f"{label}: {total:,} done\n")


def note(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


# ---- measuring a worker ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def pid_of(worker: WindowProcess) -> int:
    if worker.proc is None:
        raise RuntimeError("the worker was not started")
    return worker.proc.pid


async def records_done(worker: WindowProcess, source: str) -> int:
    """The worker's `window_records_total` of one source ("events" or "requests"), all outcomes."""
    _, body, _ = await worker.get("/metrics")
    total = 0.0
    for line in str(body).splitlines():
        if line.startswith("window_records_total{") and f'source="{source}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def owned_partitions(worker: WindowProcess) -> int:
    _, body, _ = await worker.get("/metrics")
    for line in str(body).splitlines():
        if line.startswith("window_partitions "):
            return int(float(line.split()[1]))
    return 0


@dataclass
class Rate:
    per_s: float
    per_cpu_s: float


async def worker_rate(
    worker: WindowProcess, source: str, total: int, timeout_s: float = 900.0
) -> Rate:
    """Records/s of `source` from the worker's first committed batch to its `total`th record, from
    its counters. Call it right after starting the worker: it polls /metrics every POLL_S from
    before the worker answers, so the first batch is seen within POLL_S of its commit."""
    return await workers_rate([worker], source, total, PARTITIONS, timeout_s)


async def workers_rate(
    workers: Sequence[WindowProcess],
    source: str,
    total: int,
    partitions: int,
    timeout_s: float = 900.0,
) -> Rate:
    """The workers' records/s together, counted from the first poll at which every worker owns
    some of the `partitions` (all of them owned) and one has committed a batch, to their
    `total`th record; per CPU-second, the workers' CPU time summed."""
    pids = [pid_of(w) for w in workers]
    deadline = time.monotonic() + timeout_s
    first: tuple[float, int, float] | None = None
    while True:
        for worker in workers:
            worker.check_alive()
        try:
            count = sum([await records_done(w, source) for w in workers])
            owned = [await owned_partitions(w) for w in workers]
        except (aiohttp.ClientError, TimeoutError):
            count, owned = 0, []  # not listening yet
        now = time.monotonic()
        settled = bool(owned) and min(owned) > 0 and sum(owned) == partitions
        if first is None and count > 0 and settled:
            first = (now, count, sum(cpu_seconds(pid) for pid in pids))
        if count >= total and first is not None:
            cpu = sum(cpu_seconds(pid) for pid in pids) - first[2]
            done = count - first[1]
            return Rate(done / max(now - first[0], 1e-9), done / max(cpu, 1e-9))
        if now > deadline:
            raise TimeoutError(f"the workers committed {count:,} of {total:,} {source} records")
        await asyncio.sleep(POLL_S)


async def wait_records(worker: WindowProcess, source: str, total: int, timeout_s: float) -> None:
    await worker_rate(worker, source, total, timeout_s)


class _Working:
    """`processing.Tables` over the bare loop's states plus one batch's changes."""

    def __init__(self, users: dict[bytes, StoredUser]) -> None:
        self.users = users
        self.changed: dict[bytes, StoredUser] = {}
        self.pages: dict[bytes, PageState] = {}

    def get_user(self, key: bytes) -> StoredUser | None:
        working = self.changed.get(key)
        return working if working is not None else self.users.get(key)

    def put_user(self, key: bytes, stored: StoredUser) -> None:
        self.changed[key] = stored

    def get_page(self, key: bytes) -> PageState | None:
        return self.pages.get(key)

    def put_page(self, key: bytes, state: PageState) -> None:
        self.pages[key] = state


Step = Callable[[_Working, Record], Sequence[Output]]
"""What the bare loop does with one record: change the working tables, return records to send."""


def fold_step(working: _Working, record: Record) -> Sequence[Output]:
    """The worker's fold step (`apply_event`), without its placement check and dead letters."""
    if record.value is not None:
        apply_event(working, decode_event(record.value))
    return ()


def decide_step(rules: RuleBook) -> Step:
    """The worker's request step (`process_request_record`): decide, fold, the two records."""

    def step(working: _Working, record: Record) -> Sequence[Output]:
        source = Source(record.topic, record.partition, record.offset)
        now = int(time.time() * 1000)
        result = process_request_record(working, record.key, record.value, source, now, rules)
        return result.outputs

    return step


async def reference_rate(
    bootstrap: str,
    source: str,
    sink: Topics,
    total: int,
    *,
    step: Step = fold_step,
    states: dict[bytes, StoredUser] | None = None,
    at_end: asyncio.Event | None = None,
) -> Rate:
    """The bare transactional loop: read_committed consume, `step` each record over a dict of
    states (`states`, else empty), then per batch of <= BATCH records of one partition ONE
    transaction with the step's records, the changed users' stored values (to the sink's
    changelog, `reference_changelog`) and the batch's offsets. From the start of `source`; or,
    given `at_end`, from its end, setting `at_end` once positioned there (a live pipeline for the
    latency reference)."""
    consumer = reader(bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=unique_name("bench-bare-loop"),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=512 * 1024,
    )
    group = unique_name("bench-bare-loop")
    names = {"events": sink.events, "decisions": sink.decisions, "dead_letter": sink.dead_letter}
    changelog = reference_changelog(sink)
    await consumer.start()
    await producer.start()
    users: dict[bytes, StoredUser] = {} if states is None else states
    done = 0
    started = cpu_started = 0.0
    try:
        partitions = [TopicPartition(source, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        if at_end is None:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
            for tp in partitions:
                await consumer.position(tp)
            at_end.set()
        while done < total:
            fetched = await consumer.getmany(timeout_ms=1_000, max_records=BATCH * 4)
            if not started and fetched:
                started, cpu_started = time.monotonic(), time.process_time()
            for tp, records in fetched.items():
                for i in range(0, len(records), BATCH):
                    batch = records[i : i + BATCH]
                    working = _Working(users)
                    outputs = [o for record in batch for o in step(working, record)]
                    async with producer.transaction():
                        sends = [
                            await producer.send(names[o.topic], o.value, key=o.key) for o in outputs
                        ]
                        sends += [
                            await producer.send(
                                changelog,
                                encode_stored_user(stored),
                                key=key,
                                partition=tp.partition,
                            )
                            for key, stored in working.changed.items()
                        ]
                        await producer.send_offsets_to_transaction(
                            {tp: batch[-1].offset + 1}, group
                        )
                        await asyncio.gather(*sends)
                    users.update(working.changed)
                    done += len(batch)
    finally:
        await producer.stop()
        await consumer.stop()
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    return Rate(done / elapsed, done / max(cpu, 1e-9))


def reference_changelog(sink: Topics) -> str:
    return f"{sink.prefix}reference-changelog"


async def reference_topics(bootstrap: str, prefix: str) -> Topics:
    """The bare loop's output topics, apart from the worker's (whose inputs they would be)."""
    sink = Topics(prefix)
    await ensure_topics(bootstrap, sink, PARTITIONS)
    # compacted, co-partitioned: like the worker's changelog
    await ensure_changelogs(bootstrap, [reference_changelog(sink)], PARTITIONS, 1)
    return sink


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = reader(bootstrap)
    await consumer.start()
    try:
        return dict(
            await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        )
    finally:
        await consumer.stop()


async def fold_from(
    bootstrap: str, topic: str, starts: Mapping[TopicPartition, int]
) -> dict[bytes, StoredUser]:
    """The users folded from `topic`'s records after `starts` (the bare loop's starting state)."""
    working = _Working({})

    def fold_all(records: Sequence[Record]) -> None:
        for record in records:
            fold_step(working, record)

    consumer = reader(bootstrap)
    await consumer.start()
    try:
        await read_partitions(consumer, dict(starts), fold_all)
    finally:
        await consumer.stop()
    return working.changed


def worker_for(
    bootstrap: str,
    prefix: str,
    workdir: Path,
    name: str,
    env: Mapping[str, str] | None = None,
    partitions: int = PARTITIONS,
) -> WindowProcess:
    return WindowProcess(
        bootstrap,
        prefix=prefix,
        port=free_port(),
        data_dir=workdir / name,
        log=workdir / f"{name}.log",
        partitions=partitions,
        extra_env=env,
    )


# ---- latency -----------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def latency(
    bootstrap: str, events_topic: str, changelog: str, seconds: float, rate: int
) -> tuple[list[float], list[float], int]:
    """(visible latencies, echo latencies, events sent) at `rate` events/s, in ms. Every event
    is a new user's first message: each one changes state (the worker's costliest case)."""
    consumer = reader(bootstrap, fetch_max_wait_ms=5)
    # linger 5 ms: a request per event would load the shared broker and cores for nothing.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    partitions = [
        TopicPartition(t, p) for t in (events_topic, changelog) for p in range(PARTITIONS)
    ]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:
        await consumer.position(tp)
    scheduled: dict[bytes, float] = {}
    visible: list[float] = []
    echoed: list[float] = []
    count = int(seconds * rate)
    stamp = int(time.time() * 1000)
    tag = f"latency-{rate}"

    async def send() -> None:
        start = time.monotonic() + 0.2
        for i in range(count):
            at = start + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            user = f"{tag}-{i}"
            event = MessageReceived(
                page_id=PAGES[0], user_id=user, timestamp=stamp + i, mid=f"l{i}"
            )
            key = event.key.encode()
            scheduled[key] = at
            await producer.send(events_topic, key=key, value=encode_event(event))

    async def receive() -> None:
        deadline = time.monotonic() + seconds + 30
        while len(visible) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=50)
            now = time.monotonic()
            for tp, messages in batches.items():
                for message in messages:
                    at = scheduled.get(message.key or b"")
                    if at is None:
                        continue
                    (visible if tp.topic == changelog else echoed).append((now - at) * 1000)

    try:
        await asyncio.gather(send(), receive())
    finally:
        await producer.stop()
        await consumer.stop()
    return visible, echoed, count


async def bare_latency(bootstrap: str, prefix: str, seconds: float) -> list[float]:
    """The latency test against the bare transactional loop (no worker running), on topics of
    its own: ms until its state record for the user is readable read_committed."""
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, PARTITIONS)
    sink = await reference_topics(bootstrap, f"{prefix}out.")
    at_end = asyncio.Event()
    count = int(seconds * RATE)
    loop = asyncio.create_task(reference_rate(bootstrap, topics.events, sink, count, at_end=at_end))
    waiting = asyncio.create_task(at_end.wait())
    await asyncio.wait({loop, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if loop.done():
        waiting.cancel()
        loop.result()  # it failed before it could start: say why
    visible, _, _ = await latency(
        bootstrap, topics.events, reference_changelog(sink), seconds, RATE
    )
    await asyncio.wait_for(loop, 60)
    return visible


# ---- reading what the workers wrote --------------------------------------------------------------


async def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Every committed record of `topic` up to its end now."""
    consumer = reader(bootstrap)
    await consumer.start()
    found: list[Record] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        await read_partitions(consumer, dict.fromkeys(tps), found.extend)
    finally:
        await consumer.stop()
    return found


def decision_mix(records: Sequence[Record]) -> Counter[str]:
    """ "allowed: <mechanism>" or "refused: <reason>" per decision record."""
    mix: Counter[str] = Counter()
    for record in records:
        decision = decode_decision_record(record.value or b"").decision
        mix[
            f"allowed: {decision.mechanism}" if decision.allowed else f"refused: {decision.reason}"
        ] += 1
    return mix


async def serving(worker: WindowProcess, users: Sequence[tuple[str, str]]) -> bool:
    """Whether the worker answers every (page, user) with a known state (asked all at once, so
    a worker that answers slowly while it indexes is charged one slow answer, not one each)."""

    async def known(page: str, user: str) -> bool:
        status, body, _ = await worker.get(f"/v1/pages/{page}/users/{user}")
        return status == 200 and bool(body.get("known"))

    return all(await asyncio.gather(*(known(page, user) for page, user in users)))


async def until_serving(
    worker: WindowProcess, users: Sequence[tuple[str, str]], timeout_s: float
) -> tuple[float, float]:
    """Seconds (from now) until /healthz is 200, and until every sampled user is served."""
    started = time.monotonic()
    await worker.wait_ready(timeout_s)
    healthy = time.monotonic() - started
    deadline = started + timeout_s
    while True:
        worker.check_alive()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            if await serving(worker, users):
                return healthy, time.monotonic() - started
        if time.monotonic() > deadline:
            raise TimeoutError(f"{worker.url} does not serve its users after {timeout_s} s")
        await asyncio.sleep(0.05)


async def reach_complete(worker: WindowProcess, timeout_s: float) -> None:
    """Wait until the worker's reach index has counted every partition (its last per-user cost)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive()
        status, body, _ = await worker.get(f"/v1/pages/{PAGES[0]}/reach")
        if status == 200 and body.get("complete"):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{worker.url}: reach index incomplete after {timeout_s} s")


# ---- figures -----------------------------------------------------------------------------------


# ---- the phases --------------------------------------------------------------------------------


async def fold_latency_decisions(
    bootstrap: str, sizes: Sizes, workdir: Path, start: int
) -> tuple[list[Figure], dict[str, Any]]:
    """Phases 1 to 3 on one set of topics."""
    prefix = f"{unique_name('bench-window')}."
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, PARTITIONS)
    users = max(1, sizes.fold_events // 3)
    note(f"fold: {sizes.fold_events:,} events for {users:,} users")
    await produce(
        bootstrap,
        topics.events,
        traffic(users, sizes.fold_events, 1, start, time_ordered=True),
        sizes.fold_events,
    )
    sink = await reference_topics(bootstrap, f"{prefix}bare.")
    reference = await reference_rate(bootstrap, topics.events, sink, sizes.fold_events)
    note(f"fold: bare transactional loop {reference.per_s:,.0f}/s")
    worker = worker_for(bootstrap, prefix, workdir, "fold").start()
    figures: list[Figure] = []
    try:
        measured = await worker_rate(worker, "events", sizes.fold_events)
        note(f"fold: worker {measured.per_s:,.0f}/s; latency at {RATE:,}/s")
        changelog = changelog_topic(f"{prefix}window", USERS_TABLE)
        visible, echoed, sent = await latency(
            bootstrap, topics.events, changelog, sizes.latency_s, RATE
        )
        folded = sizes.fold_events + sent
        await wait_records(worker, "events", folded, 120)
        note(f"decisions: setting up {sizes.requests:,} users")
        setup_from = await end_offsets(bootstrap, topics.events)
        now = int(time.time() * 1000)
        setup = list(decision_setup(sizes.requests, now))
        await produce(bootstrap, topics.events, iter(setup), len(setup))
        await wait_records(worker, "events", folded + len(setup), 300)
    finally:
        code = await worker.terminate()
    if code not in (0, None):
        note(f"the fold worker exited with {code}; log: {worker.log}")
    note(f"latency: the bare transactional loop at {RATE:,}/s")
    bare_visible = await bare_latency(bootstrap, f"{prefix}latency.", sizes.latency_s)
    ratio = measured.per_s / reference.per_s
    figures += [
        Figure(
            "fold: events/s, one worker",
            measured.per_s,
            "events/s",
            f"bare transactional loop: {reference.per_s:,.0f}/s",
            reference.per_s,
            "≥ 10,000/s and ≥ 0.5x",
            measured.per_s >= 10_000 and ratio >= 0.5,
        ),
        Figure(
            "fold: events per CPU-second",
            measured.per_cpu_s,
            "events",
            f"bare transactional loop: {reference.per_cpu_s:,.0f}",
            reference.per_cpu_s,
        ),
    ]
    if len(visible) < sent:
        note(f"latency: {len(visible):,} of {sent:,} became visible in time")
    for share in (0.5, 0.99):
        mine, theirs = percentile(visible, share), percentile(echoed, share)
        bare = percentile(bare_visible, share)
        p99 = share == 0.99
        figures.append(
            Figure(
                f"produce → state visible, p{share * 100:.0f} @ {RATE:,}/s",
                mine,
                "ms",
                f"bare transactional loop: {bare:,.1f} ms",
                bare,
                "≤ 200 ms" if p99 else "-",
                mine <= 200 if p99 else None,
                {"visible": len(visible), "sent": sent, "event_read_back_ms": theirs},
            )
        )
        figures.append(
            Figure(
                f"produce → event read back, p{share * 100:.0f} @ {RATE:,}/s",
                theirs,
                "ms",
                "(Kafka's own trip under the same load)",
            )
        )

    # 3. decisions: the requests wait in their topic while no worker runs, then one decides them.
    requests = [decision_request(n, decision_user(n)) for n in range(sizes.requests)]
    await produce(bootstrap, topics.send_requests, iter(requests), len(requests))
    states = await fold_from(bootstrap, topics.events, setup_from)
    bare_decided = await reference_rate(
        bootstrap,
        topics.send_requests,
        sink,
        len(requests),
        step=decide_step(load_rules(None)),
        states=states,
    )
    bare_mix = decision_mix(await read_topic(bootstrap, sink.decisions))
    note(f"decisions: bare transactional loop {bare_decided.per_s:,.0f}/s; mix {dict(bare_mix)}")
    decider = worker_for(bootstrap, prefix, workdir, "decide").start()
    try:
        decided = await worker_rate(decider, "requests", len(requests))
    finally:
        code = await decider.terminate()
    if code not in (0, None):
        note(f"the deciding worker exited with {code}; log: {decider.log}")
    mix = decision_mix(await read_topic(bootstrap, topics.decisions))
    note(f"decisions: {decided.per_s:,.0f}/s; mix {dict(mix)}")
    figures += [
        Figure(
            "decisions/s, one worker",
            decided.per_s,
            "decisions/s",
            f"bare transactional loop: {bare_decided.per_s:,.0f}/s",
            bare_decided.per_s,
            "≥ 5,000/s",
            decided.per_s >= 5_000,
            {"mix": dict(mix), "bare_loop_mix": dict(bare_mix)},
        ),
        Figure(
            "decisions per CPU-second",
            decided.per_cpu_s,
            "decisions",
            f"bare transactional loop: {bare_decided.per_cpu_s:,.0f}",
            bare_decided.per_cpu_s,
        ),
    ]
    inputs = {
        "fold_events": sizes.fold_events,
        "fold_users": users,
        "latency_events": sent,
        "requests": len(requests),
        "decision_mix": dict(mix),
    }
    return figures, inputs


async def failover(bootstrap: str, sizes: Sizes, workdir: Path) -> tuple[list[Figure], int]:
    """Phase 4; also returns an empty worker's RSS (a worker at ready, before any record)."""
    prefix = f"{unique_name('bench-failover')}."
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, PARTITIONS)
    workers = [worker_for(bootstrap, prefix, workdir, f"failover-{i}").start() for i in (1, 2)]
    followers: AIOKafkaConsumer | None = None
    try:
        for worker in workers:
            await worker.wait_ready(120)
        deadline = time.monotonic() + 120
        while [await owned_partitions(w) for w in workers] != [PARTITIONS // 2] * 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the two workers did not split the partitions")
            await asyncio.sleep(0.2)
        for worker in workers:
            await worker.wait_ready(120)
        empty_rss = rss_bytes(pid_of(workers[0]))
        now = int(time.time() * 1000)
        users = [f"failover-{n}" for n in range(sizes.failover_users)]
        opened = [
            MessageReceived(page_id=PAGES[0], user_id=u, timestamp=now - HOUR_MS, mid=f"f{u}")
            for u in users
        ]
        await produce(
            bootstrap,
            topics.events,
            ((e.key.encode(), encode_event(e)) for e in opened),
            len(users),
        )
        deadline = time.monotonic() + 120
        while sum([await records_done(w, "events") for w in workers]) < len(users):
            if time.monotonic() > deadline:
                raise TimeoutError("the two workers did not fold the failover users")
            await asyncio.sleep(0.2)
        # Who serves what: the victim's partitions are those that move.
        victim = workers[1]
        moved = set()
        for user in users[:128]:
            _, _, headers = await workers[0].get(f"/v1/pages/{PAGES[0]}/users/{user}")
            if headers.get(SERVED_BY_HEADER) == victim.url:
                moved.add(partition_for(f"{PAGES[0]}:{user}".encode(), PARTITIONS))
        followers = reader(bootstrap, fetch_max_wait_ms=5)
        await followers.start()
        tps = [TopicPartition(topics.decisions, p) for p in range(PARTITIONS)]
        followers.assign(tps)
        await followers.seek_to_end(*tps)
        for tp in tps:
            await followers.position(tp)
        victim.kill()
        killed = time.monotonic()
        await produce(
            bootstrap,
            topics.send_requests,
            (decision_request(n, u) for n, u in enumerate(users)),
            len(users),
        )
        firsts: dict[bool, float] = {}
        last_moved = 0.0
        seen_moved = 0
        expected_moved = sum(
            1 for u in users if partition_for(f"{PAGES[0]}:{u}".encode(), PARTITIONS) in moved
        )
        deadline = killed + 120
        while seen_moved < expected_moved:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{seen_moved} of {expected_moved} moved requests decided")
            fetched = await followers.getmany(timeout_ms=50)
            at = time.monotonic() - killed
            for tp, records in fetched.items():
                did_move = tp.partition in moved
                firsts.setdefault(did_move, at)
                if did_move:
                    seen_moved += len(records)
                    last_moved = at
    finally:
        if followers is not None:
            await followers.stop()
        await asyncio.gather(*(w.terminate() for w in workers))
    stayed = firsts.get(False)
    first = firsts[True]
    figure = Figure(
        "failover: kill -9 → first decision on a moved partition",
        first,
        "s",
        "a partition that stayed: " + ("-" if stayed is None else f"{stayed:,.1f} s"),
        stayed,
        "≤ 15 s",
        first <= 15,
        {"last_moved_s": last_moved, "moved_partitions": sorted(moved)},
    )
    return [
        figure,
        Figure(
            "failover: kill -9 → last moved request decided",
            last_moved,
            "s",
            f"{expected_moved} requests on {len(moved)} moved partitions",
        ),
    ], empty_rss


async def rebuild_and_restore(
    bootstrap: str, sizes: Sizes, workdir: Path, start: int, empty_rss: int
) -> tuple[list[Figure], dict[str, Any]]:
    """Phases 5 to 7: rebuild users from events, then a worker restores them from its changelog."""
    figures: list[Figure] = []
    prefix = f"{unique_name('bench-rebuild')}."
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, PARTITIONS)
    note(f"rebuild: {sizes.rebuild_events:,} events for {sizes.rebuild_users:,} users")
    produce_s = await produce(
        bootstrap,
        topics.events,
        traffic(sizes.rebuild_users, sizes.rebuild_events, 2, start),
        sizes.rebuild_events,
    )
    read_started = time.monotonic()
    await read_to_end(bootstrap, topics.events, lambda _: None, sys.stderr, "reading")
    read_s = time.monotonic() - read_started
    rebuilt = await rebuild(bootstrap, topics.events, PARTITIONS, sys.stderr)
    users = rebuilt.tables.users
    scaled = rebuilt.seconds * 3_000_000 / max(rebuilt.records, 1)
    full = sizes.rebuild_events >= 3_000_000
    exact = sizes.rebuild_events == 3_000_000
    figures.append(
        Figure(
            f"rebuild: {len(users):,} users / {rebuilt.records:,} events",
            rebuilt.seconds,
            "s",
            f"read without folding: {read_s:,.1f} s",
            read_s,
            # The target is for 3 M events: any other size (--scale's 15 M too) is scaled to it.
            "≤ 3 min" if exact else f"≤ 3 min for 3 M events (scaled: {scaled:,.0f} s)",
            rebuilt.seconds <= 180 if exact else scaled <= 180,
        )
    )

    # 6. restore: the rebuilt states become a fresh worker's changelog.
    prefix = f"{unique_name('bench-restore')}."
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, PARTITIONS)
    app_id = f"{prefix}window"
    changelog = changelog_topic(app_id, USERS_TABLE)
    await ensure_changelogs(
        bootstrap, [changelog, changelog_topic(app_id, PAGES_TABLE)], PARTITIONS, 1
    )
    stored_sizes: list[int] = []

    def records() -> Iterator[tuple[bytes, bytes]]:
        for key, stored in users.items():
            raw = encode_stored_user(stored)
            stored_sizes.append(len(raw))
            yield key, raw

    changelog_s = await produce(bootstrap, changelog, records(), len(users))
    stored_mean = statistics.fmean(stored_sizes)
    keys = list(users)
    step = max(1, len(keys) // SAMPLE_USERS)
    sampled = keys[::step][:SAMPLE_USERS]
    sample_users = [(users[k].state.page_id, users[k].state.user_id) for k in sampled]
    partitions_sampled = {partition_for(k, PARTITIONS) for k in sampled}
    assert len(partitions_sampled) == PARTITIONS, "the sample misses a partition"
    timeout = 600.0
    note(f"restore: {len(users):,} users, first start")
    first = worker_for(bootstrap, prefix, workdir, "restore-1").start()
    try:
        first_healthy, first_served = await until_serving(first, sample_users, timeout)
    finally:
        first.kill()
    killed = time.monotonic()
    note(f"restore: first start served in {first_served:,.1f} s; killed; starting another")
    second = worker_for(bootstrap, prefix, workdir, "restore-2").start()
    try:
        healthy, served = await until_serving(second, sample_users, timeout)
        served_after_kill = time.monotonic() - killed
        await reach_complete(second, timeout)
        rss = rss_bytes(pid_of(second))
        restores = [
            line
            for line in second.tail(200_000).splitlines()
            if "changelog records restored" in line
        ]
    finally:
        await second.terminate()
    figures += [
        Figure(
            f"restore after kill -9: {len(users):,} users → /healthz 200 and users served",
            served,
            "s",
            f"first start on the same changelog: {first_served:,.1f} s "
            f"(/healthz 200 at {healthy:,.1f} s; first start {first_healthy:,.1f} s)",
            first_served,
            # Not scaled from a smaller run: about 10 s of it is the group waiting out the killed
            # member's session, whatever the number of users.
            "≤ 60 s" if full else "≤ 60 s for 1 M users: see a full run",
            served <= 60 if full else None,
            {
                "healthz_s": healthy,
                "first_start_healthz_s": first_healthy,
                "from_kill_s": served_after_kill,
                "worker_log": restores,
            },
        )
    ]
    per_user = (rss - empty_rss) / len(users)
    at_5m = empty_rss + per_user * 5_000_000
    figures += [
        Figure(
            "worker memory per user (RSS after restore − empty worker)",
            per_user,
            "B",
            f"stored value (changelog, mean): {stored_mean:,.0f} B",
            stored_mean,
            extra={"rss_bytes": rss, "empty_rss_bytes": empty_rss, "users": len(users)},
        ),
        Figure(
            "worker RSS with 5 M users (extrapolated)",
            at_5m / 2**20,
            "MiB",
            f"measured: {rss / 2**20:,.0f} MiB with {len(users):,} users",
            rss / 2**20,
            "≤ 1 GiB",
            at_5m <= GIB,
        ),
    ]
    plain = statistics.fmean(
        len(orjson.dumps(to_wire(v.state))) for v in list(users.values())[:: max(1, step // 8)]
    )
    first_key = keys[0]
    assert decode_stored_user(encode_stored_user(users[first_key])) == users[first_key]
    inputs = {
        "rebuild_events": rebuilt.records,
        "rebuild_users": sizes.rebuild_users,
        "rebuild_produce_s": produce_s,
        "restore_users": len(users),
        "changelog_produce_s": changelog_s,
        "stored_value_mean_bytes": stored_mean,
        "plain_json_mean_bytes": plain,
    }
    return figures, inputs


# ---- --scale: cost against the number of users, and workers side by side -----------------------

SCALE_USERS = (10_000, 100_000, 1_000_000)
"""The users of `--scale` (3 events each); `--users` adds 5 M where the machine has the memory."""
SCALE_EVENTS_PER_USER = 3
PARALLEL_PARTITIONS = 16
PARALLEL_EVENTS = 240_000


async def empty_worker_rss(bootstrap: str, workdir: Path) -> int:
    """The RSS of a worker at ready on empty topics: the base the per-user memory is taken from."""
    prefix = f"{unique_name('bench-empty')}."
    await ensure_topics(bootstrap, Topics(prefix), PARTITIONS)
    worker = worker_for(bootstrap, prefix, workdir, "empty").start()
    try:
        await worker.wait_ready(120)
        return rss_bytes(pid_of(worker))
    finally:
        await worker.terminate()


async def parallel_fold(bootstrap: str, workdir: Path, start: int, events: int) -> list[Figure]:
    """The scaling plan's assumption: two workers sharing 16 partitions fold about twice what one
    does. The same backlog on two sets of topics; one worker folds the first, two the second
    (counted once both own partitions)."""
    users = events // SCALE_EVENTS_PER_USER
    rates: list[Rate] = []
    for count in (1, 2):
        prefix = f"{unique_name(f'bench-parallel{count}')}."
        topics = Topics(prefix)
        await ensure_topics(bootstrap, topics, PARALLEL_PARTITIONS)
        await produce(bootstrap, topics.events, traffic(users, events, 2, start), events)
        note(f"parallel: {count} worker(s) on {PARALLEL_PARTITIONS} partitions, {events:,} events")
        workers = [
            worker_for(
                bootstrap, prefix, workdir, f"parallel{count}-{i}", partitions=PARALLEL_PARTITIONS
            ).start()
            for i in range(count)
        ]
        try:
            rates.append(await workers_rate(workers, "events", events, PARALLEL_PARTITIONS))
        finally:
            for worker in workers:
                await worker.terminate()
    one, two = rates
    cpus = os.cpu_count() or 1
    return [
        Figure(
            f"fold: events/s, 2 workers sharing {PARALLEL_PARTITIONS} partitions",
            two.per_s,
            "events/s",
            f"one worker on the same partitions: {one.per_s:,.0f}/s",
            one.per_s,
            "≈ 2x one worker (the scaling plan's assumption)",
            two.per_s >= 1.8 * one.per_s,
            {"cpus": cpus, "one_per_cpu_s": one.per_cpu_s, "two_per_cpu_s": two.per_cpu_s},
        ),
        Figure(
            f"fold: events per CPU-second, 2 workers sharing {PARALLEL_PARTITIONS} partitions",
            two.per_cpu_s,
            "events",
            f"one worker: {one.per_cpu_s:,.0f}",
            one.per_cpu_s,
            "≈ 1x one worker (cost per event does not grow with workers)",
            two.per_cpu_s >= 0.8 * one.per_cpu_s,
        ),
    ]


def scale_point(users: int, figures: Sequence[Figure], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the cost-growth table from `rebuild_and_restore`'s figures."""
    rebuilt, restored, memory = figures[0], figures[1], figures[2]
    return {
        "users": users,
        "events": inputs["rebuild_events"],
        "rebuild_s": rebuilt.value,
        "fold_events_per_s": inputs["rebuild_events"] / rebuilt.value,
        "read_events_per_s": inputs["rebuild_events"] / max(rebuilt.reference_value or 0, 1e-9),
        "restore_after_kill_s": restored.value,
        "restore_first_start_s": restored.reference_value,
        "healthz_after_kill_s": restored.extra["healthz_s"],
        "rss_bytes": memory.extra["rss_bytes"],
        "empty_rss_bytes": memory.extra["empty_rss_bytes"],
        "memory_per_user_bytes": memory.value,
        "stored_value_mean_bytes": inputs["stored_value_mean_bytes"],
    }


async def scale_async(bootstrap: str, sizes: Sequence[int], parallel_events: int) -> None:
    began = datetime.now(UTC)
    started = time.monotonic()
    start = int(time.time() * 1000) - 2 * DAY_MS
    workdir = Path(tempfile.mkdtemp(prefix="bench-window-scale-"))
    figures: list[Figure] = []
    points: list[dict[str, Any]] = []
    try:
        empty_rss = await empty_worker_rss(bootstrap, workdir)
        for users in sizes:
            note(f"scale: {users:,} users")
            size = replace(QUICK, rebuild_users=users, rebuild_events=users * SCALE_EVENTS_PER_USER)
            more, inputs = await rebuild_and_restore(bootstrap, size, workdir, start, empty_rss)
            points.append(scale_point(users, more, inputs))
            figures += [
                replace(f, name=f"{users:,} users: {f.name}")
                for f in more
                if not f.name.startswith("worker RSS with 5 M")
            ]
        if parallel_events:
            figures += await parallel_fold(bootstrap, workdir, start, parallel_events)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(figures)
    inputs = {
        "users": list(sizes),
        "events_per_user": SCALE_EVENTS_PER_USER,
        "partitions": PARTITIONS,
        "parallel_partitions": PARALLEL_PARTITIONS,
        "parallel_events": parallel_events,
        "empty_rss_bytes": empty_rss,
        "elapsed_s": time.monotonic() - started,
    }
    path = write_results("window-scale", figures, False, inputs, began, {"scale": points})
    print(f"written: {shown(path)}")


# ---- the run -----------------------------------------------------------------------------------


async def run_async(bootstrap: str, quick: bool) -> None:
    sizes = QUICK if quick else FULL
    began = datetime.now(UTC)
    started = time.monotonic()
    start = int(time.time() * 1000) - 2 * DAY_MS
    workdir = Path(tempfile.mkdtemp(prefix="bench-window-"))
    try:
        figures, inputs = await fold_latency_decisions(bootstrap, sizes, workdir, start)
        note("failover")
        more, empty_rss = await failover(bootstrap, sizes, workdir)
        figures += more
        more, restored = await rebuild_and_restore(bootstrap, sizes, workdir, start, empty_rss)
        figures += more
        inputs.update(restored)
        inputs["failover_users"] = sizes.failover_users
        inputs["partitions"] = PARTITIONS
        inputs["batch"] = BATCH
        inputs["elapsed_s"] = time.monotonic() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(figures)
    faust, faust_ratio = FAUST_HISTORICAL
    print(
        f"\nhistorical, not re-run: the faust worker, last measured by the faust version of this "
        f"bench: {faust:,} events/s, {faust_ratio:.2f}x its (non-transactional) bare loop"
    )
    mix = ", ".join(f"{k} {v:,}" for k, v in sorted(inputs["decision_mix"].items()))
    print(
        f"inputs: {inputs['fold_events']:,} events for {inputs['fold_users']:,} users (fold), "
        f"{inputs['latency_events']:,} new users' messages at {RATE:,}/s (latency), "
        f"{inputs['requests']:,} requests ({mix}), {sizes.failover_users} failover users, "
        f"{inputs['rebuild_events']:,} events for {sizes.rebuild_users:,} users (rebuild), whose "
        f"states are the restore's changelog ({inputs['stored_value_mean_bytes']:,.0f} B stored, "
        f"{inputs['plain_json_mean_bytes']:,.0f} B as plain JSON per user); {PARTITIONS} "
        f"partitions, {BATCH} records per transaction; {inputs['elapsed_s']:,.0f} s in all."
    )
    memory = next(f for f in figures if f.name.startswith("worker RSS with 5 M"))
    if not memory.met:
        print(
            f"memory: every user's state is held in the worker's memory now; at this rate 5 M "
            f"users need {memory.value / 1024:,.1f} GiB, so the 1 GiB target is NOT met."
        )
    print("Ratios are value / reference; targets are the issue's, for reading, not asserted.")
    historical = {
        "historical": {
            "faust_fold_events_per_s": FAUST_HISTORICAL[0],
            "faust_ratio_to_bare_loop": FAUST_HISTORICAL[1],
        }
    }
    path = write_results("window", figures, quick, inputs, began, historical)
    print(f"written: {shown(path)}")


# ---- --broadcast: a broadcast's fan-out, its dry run, and webhooks folded meanwhile --------------

BROADCAST_USERS = (100_000, 1_000_000)
BROADCAST_TOPIC = "restock"
BROADCAST_PROBE_RATE = 200
"""Webhook events/s sent while the fan-out runs (each a new user's first message)."""
BROADCAST_PROBE_S = 10.0
BROADCAST_FANOUT_MAX = 100_000
"""A larger broadcast's rate is measured over its first this many decisions, then it is cancelled
(the rest would take minutes on a shared 2-core machine and say nothing more)."""


async def decisions_rate(worker: WindowProcess, total: int, timeout_s: float) -> Rate:
    """Decisions/s (and per CPU-second of the worker) from now, when the broadcast is about to be
    created, until the worker's counters show `total` decisions."""
    pid = pid_of(worker)
    started, cpu = time.monotonic(), cpu_seconds(pid)
    while (count := await records_done(worker, "requests")) < total:
        worker.check_alive()
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{count:,} of {total:,} recipients decided after {timeout_s} s")
        await asyncio.sleep(POLL_S)
    elapsed, used = time.monotonic() - started, cpu_seconds(pid) - cpu
    return Rate(count / max(elapsed, 1e-9), count / max(used, 1e-9))


async def send_broadcast_command(
    bootstrap: str, topics: Topics, spec: BroadcastSpec, kind: CommandKind, now: int
) -> None:
    """One command to every partition, as the front writes it."""
    command = BroadcastCommand(
        kind=kind,
        broadcast_id=spec.broadcast_id,
        page_id=spec.page_id,
        at=now,
        spec=spec if kind == "create" else None,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            await producer.send(
                topics.broadcast_commands,
                key=spec.broadcast_id.encode(),
                value=encode_command(command),
                partition=partition,
            )
        await producer.flush()
    finally:
        await producer.stop()


def broadcast_holders(users: int, now: int) -> Iterator[tuple[bytes, bytes]]:
    """Users of one page holding one OTN token on BROADCAST_TOPIC, their window closed (so the
    fan-out uses the token), as the worker would have stored them."""
    for n in range(users):
        event = OtnOptin(
            page_id=PAGES[0],
            user_id=f"bc-{n}",
            timestamp=now - 30 * HOUR_MS,
            token=f"tok-{n}",
            topic=BROADCAST_TOPIC,
        )
        yield event.key.encode(), encode_stored_user(StoredUser(fold_event(None, event)))


async def post_dry_run(worker: WindowProcess, spec: BroadcastSpec) -> tuple[float, dict[str, Any]]:
    """(seconds, answer) of one dry run through the worker's endpoint."""
    headers = {"Authorization": f"Bearer {worker.token}"}
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
        session.post(f"{worker.url}{DRY_RUN_PATH}", json=to_wire(spec), headers=headers) as answer,
    ):
        body = await answer.json()
    return time.monotonic() - started, body


async def broadcast_point(
    bootstrap: str, users: int, workdir: Path
) -> tuple[list[Figure], dict[str, Any]]:
    """One size: holders straight into a fresh worker's changelog; the dry run timed (reach facts
    complete: its cheap path); then a broadcast to all of them, its decisions/s from the worker's
    counters, and webhook visibility (`latency`) measured while it fans out."""
    prefix = f"{unique_name('bench-broadcast')}."
    topics = Topics(prefix)
    await ensure_topics(bootstrap, topics, PARTITIONS)
    await ensure_broadcast_topics(bootstrap, topics, PARTITIONS)
    app_id = f"{prefix}window"
    changelog = changelog_topic(app_id, USERS_TABLE)
    await ensure_changelogs(
        bootstrap,
        [changelog, changelog_topic(app_id, PAGES_TABLE), changelog_topic(app_id, "broadcasts")],
        PARTITIONS,
        1,
    )
    now = int(time.time() * 1000)
    note(f"broadcast: {users:,} OTN holders into the changelog")
    await produce(bootstrap, changelog, broadcast_holders(users, now), users)
    worker = worker_for(bootstrap, prefix, workdir, f"broadcast-{users}").start()
    try:
        await until_serving(worker, [(PAGES[0], "bc-0")], 900)
        await reach_complete(worker, 900)
        spec = BroadcastSpec(
            broadcast_id=f"bench-{users}",
            page_id=PAGES[0],
            message={"text": "back in stock"},
            audience=Audience(topic=BROADCAST_TOPIC),
        )
        answer: dict[str, Any] = {}
        deadline = time.monotonic() + 900
        while not (answer.get("complete") and answer.get("audience") == users):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the dry run never saw every holder: {answer}")
            await asyncio.sleep(0.5)
            _, answer = await post_dry_run(worker, spec)
        timings = [(await post_dry_run(worker, spec))[0] for _ in range(3)]
        dry_s = statistics.median(timings)
        note(f"broadcast: dry run {dry_s * 1000:,.0f} ms ({answer['by_mechanism']})")
        whole = users <= BROADCAST_FANOUT_MAX
        counted = users if whole else BROADCAST_FANOUT_MAX
        rate_task = asyncio.create_task(decisions_rate(worker, counted, 1800))
        await send_broadcast_command(bootstrap, topics, spec, "create", now)
        note(f"broadcast: fanning out to {users:,}; webhooks at {BROADCAST_PROBE_RATE}/s meanwhile")
        visible, echoed, sent = await latency(
            bootstrap, topics.events, changelog, BROADCAST_PROBE_S, BROADCAST_PROBE_RATE
        )
        during = not rate_task.done()
        rate = await rate_task
        if not whole:  # the first BROADCAST_FANOUT_MAX decisions were the measure: stop there
            await send_broadcast_command(bootstrap, topics, spec, "cancel", now)
            await asyncio.sleep(2.0)
        decided = sum(
            decode_progress(r.value).decided
            for r in await read_topic(bootstrap, topics.broadcasts)
            if r.value is not None
        )
    finally:
        await worker.terminate()
    p99 = percentile(visible, 0.99) if visible else float("nan")
    figures = [
        Figure(
            f"broadcast fan-out: {users:,} recipients, decisions/s (1 worker"
            + ("" if whole else f", first {counted:,}")
            + ")",
            rate.per_s,
            "/s",
            f"per CPU-second of the worker: {rate.per_cpu_s:,.0f}",
            rate.per_cpu_s,
            "≥ 20,000/s",
            rate.per_s >= 20_000,
            {"decided_in_progress_records": decided},
        ),
        Figure(
            f"broadcast dry run: {users:,} users (median of 3)",
            dry_s * 1000,
            "ms",
            f"slowest: {max(timings) * 1000:,.0f} ms",
            max(timings) * 1000,
            "≤ 1 s",
            dry_s <= 1.0,
            {"answer": answer},
        ),
        Figure(
            f"p99 event visibility during the {users:,}-recipient fan-out",
            p99,
            "ms",
            f"p50: {percentile(visible, 0.5) if visible else float('nan'):,.0f} ms; echo p99 "
            f"{percentile(echoed, 0.99) if echoed else float('nan'):,.0f} ms",
            percentile(echoed, 0.99) if echoed else None,
            "≤ 500 ms" + ("" if during else " (the fan-out ended before the probe did)"),
            p99 <= 500 if visible and during else None,
            {"probe_events": sent, "visible": len(visible), "fan_out_still_running": during},
        ),
    ]
    return figures, {f"broadcast_{users}_decided": decided}


async def broadcast_async(bootstrap: str, sizes: Sequence[int]) -> None:
    began = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="bench-broadcast-"))
    figures: list[Figure] = []
    inputs: dict[str, Any] = {"partitions": PARTITIONS, "sizes": list(sizes)}
    try:
        for users in sizes:
            more, found = await broadcast_point(bootstrap, users, workdir)
            figures += more
            inputs.update(found)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(figures)
    path = write_results("window-broadcast", figures, False, inputs, began)
    print(f"written: {shown(path)}")


def run(
    quick: bool,
    scale: Sequence[int] = (),
    parallel_events: int = 0,
    broadcast: Sequence[int] = (),
) -> None:
    print(
        f"windowgate window bench{' (--scale)' if scale else ' (--quick)' if quick else ''}: "
        f"Python "
        f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs (broker, "
        "workers and this process share them)"
    )
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with contextlib.ExitStack() as stack:
        if given:
            bootstrap = given
        else:
            kafka = stack.enter_context(LocalKafka())
            bootstrap = kafka.bootstrap
        if broadcast:
            asyncio.run(broadcast_async(bootstrap, broadcast))
        elif scale:
            asyncio.run(scale_async(bootstrap, scale, parallel_events))
        else:
            asyncio.run(run_async(bootstrap, quick))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.window", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs, about 2 minutes")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="rebuild, restore time and RSS at 10 k, 100 k and 1 M users, then 2 workers beside "
        "one on 16 partitions; results in bench/results/window-scale-*.json",
    )
    parser.add_argument(
        "--users",
        default=",".join(str(n) for n in SCALE_USERS),
        help="--scale's sizes, comma-separated (5000000 adds 5 M: needs about 8 GiB free)",
    )
    parser.add_argument(
        "--parallel-events",
        type=int,
        default=PARALLEL_EVENTS,
        help="--scale: the backlog of the 1-vs-2-workers check (0 leaves it out)",
    )
    parser.add_argument(
        "--broadcast",
        action="store_true",
        help="a broadcast's fan-out rate, dry-run time and webhook visibility meanwhile; results "
        "in bench/results/window-broadcast-*.json",
    )
    parser.add_argument(
        "--broadcast-users",
        default=",".join(str(n) for n in BROADCAST_USERS),
        help="--broadcast's audience sizes, comma-separated",
    )
    args = parser.parse_args(argv)
    scale = [int(n) for n in args.users.split(",")] if args.scale else []
    broadcast = [int(n) for n in args.broadcast_users.split(",")] if args.broadcast else []
    run(args.quick, scale, args.parallel_events, broadcast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
