"""`windowgate replay`: rebuild every user's state from the events topic alone (I8), and check it.

    windowgate replay [--bootstrap HOST:PORT] [--prefix P] [--app-id ID] [--partitions N]
                      [--compare | --no-compare] [--show N]

1. Reads `<prefix>events` from its first offset to the end offsets it finds at start, every
   partition, and folds each record with `processing.process_event_record`: the very function the
   worker's agent calls, so a divergence between the two is a real one, not two implementations
   disagreeing. Records the worker would dead-letter are counted, not folded, here too.
2. With `--compare` (the default), reads the live table, i.e. the worker's changelog topics
   (read_committed, like everything the worker writes)
   `<app id>-users-changelog` and `<app id>-pages-changelog`, to their end (last value per key),
   and prints every difference: users or pages only on one side, and for the others each field that
   differs. None are expected when the gateway is quiet; while it runs, a user changed after the
   snapshot of the end offsets can differ (run it again: a real divergence stays).

Progress goes to stderr (a bar on a terminal, a line every few seconds otherwise); the summary and
the differences to stdout. Exit 0: rebuilt (and equal), 1: differences found, 2: usage error or
the broker could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TextIO

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.codec import SchemaError, to_wire
from schemas.state import PageState, decode_page_state
from schemas.topics import Topics
from services.common.logread import read_to_end as read_logs
from services.common.logread import reader
from services.common.settings import Settings, SettingsError
from services.window.config import PAGES_TABLE, USERS_TABLE, changelog_topic
from services.window.processing import Source, process_event_record
from services.window.store import MemoryTables, StoredUser, decode_stored_user

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2
BATCH = 20_000


class ReplayError(Exception):
    """The topics could not be read as asked; the message says why."""


class Progress:
    """`label: done / total (pct) rate/s ETA`: redrawn in place on a terminal, else every 5 s."""

    def __init__(self, out: TextIO, label: str, total: int, quiet: bool = False) -> None:
        self.out = out
        self.label = label
        self.total = total
        self.quiet = quiet
        self.done = 0
        self.started = time.monotonic()
        self._shown = self.started
        self._tty = out.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if not self.quiet and now - self._shown >= (0.2 if self._tty else 5.0):
            self._shown = now
            self._draw(final=False)

    def finish(self) -> float:
        elapsed = time.monotonic() - self.started
        if not self.quiet:
            self._draw(final=True)
        return elapsed

    def _draw(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        share = self.done / self.total if self.total else 1.0
        width = 30
        bar = "#" * int(share * width) + "-" * (width - int(share * width))
        eta = (self.total - self.done) / rate if rate and not final else 0.0
        text = (
            f"{self.label}: [{bar}] {self.done:,}/{self.total:,} ({share:.0%}) "
            f"{rate:,.0f}/s {'done in ' + _duration(elapsed) if final else 'ETA ' + _duration(eta)}"
        )
        if self._tty:
            self.out.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


# ---- reading a topic to its end ------------------------------------------------------------------

Record = tuple[int, int, bytes | None, bytes | None]  # partition, offset, key, value


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not described or described[0].get("error_code", 0) != 0:
        raise ReplayError(f"topic {topic} does not exist on {bootstrap}")
    return sorted(p["partition"] for p in described[0]["partitions"])


async def read_to_end(
    bootstrap: str,
    topic: str,
    on_batch: Callable[[list[Record]], None],
    progress_out: TextIO,
    label: str,
    quiet: bool = False,
) -> int:
    """Feed every committed record of `topic`, up to the end offsets found at start, to
    `on_batch` (in partition order within a partition). Returns how many records were read."""
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = reader(bootstrap)
    await consumer.start()
    try:
        consumer.assign(partitions)
        first = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        progress = Progress(
            progress_out, label, sum(ends[tp] - first[tp] for tp in partitions), quiet
        )

        def feed(records: Sequence[ConsumerRecord]) -> None:
            batch = [(m.partition, m.offset, m.key, m.value) for m in records]
            on_batch(batch)
            progress.advance(len(batch))

        await read_logs(consumer, dict.fromkeys(partitions), feed, timeout_s=3600, batch=BATCH)
        progress.finish()
        return progress.done
    finally:
        await consumer.stop()


# ---- rebuild -------------------------------------------------------------------------------------


@dataclass
class Rebuilt:
    tables: MemoryTables = field(default_factory=MemoryTables)
    records: int = 0
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fold_records(rebuilt: Rebuilt, topic: str, partitions: int, records: Sequence[Record]) -> None:
    """The worker's event step over a batch (no clock: dead letters are only counted here)."""
    tables = rebuilt.tables
    for partition, offset, key, value in records:
        result = process_event_record(
            tables, key, value, Source(topic, partition, offset), 0, partitions
        )
        if result.problem is not None:
            rebuilt.dead_letters += 1
            if len(rebuilt.problems) < 5:
                rebuilt.problems.append(f"{topic}[{partition}]@{offset}: {result.problem}")
    rebuilt.records += len(records)


async def rebuild(
    bootstrap: str, topic: str, partitions: int, progress: TextIO, quiet: bool = False
) -> Rebuilt:
    rebuilt = Rebuilt()
    started = time.monotonic()
    await read_to_end(
        bootstrap,
        topic,
        lambda records: fold_records(rebuilt, topic, partitions, records),
        progress,
        "replay: events",
        quiet,
    )
    rebuilt.seconds = time.monotonic() - started
    return rebuilt


async def read_table(
    bootstrap: str, topic: str, progress: TextIO, quiet: bool
) -> dict[bytes, bytes]:
    """A table's live content: the last value of every key of its changelog (None deletes)."""
    latest: dict[bytes, bytes] = {}

    def keep(records: list[Record]) -> None:
        for _, _, key, value in records:
            if key is None:
                continue
            if value is None:
                latest.pop(key, None)
            else:
                latest[key] = value

    await read_to_end(bootstrap, topic, keep, progress, f"compare: {topic}", quiet)
    return latest


# ---- compare -------------------------------------------------------------------------------------


@dataclass
class Differences:
    what: str
    equal: int = 0
    only_live: list[str] = field(default_factory=list)
    only_rebuilt: list[str] = field(default_factory=list)
    differing: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.only_live) + len(self.only_rebuilt) + len(self.differing)

    def summary(self) -> str:
        return (
            f"compare: {self.what}: {self.equal:,} equal, {len(self.differing):,} differ, "
            f"{len(self.only_live):,} only in the live table, "
            f"{len(self.only_rebuilt):,} only in the rebuild"
        )

    def details(self, show: int) -> list[str]:
        lines = [f"  only live: {key}" for key in self.only_live[:show]]
        lines += [f"  only rebuilt: {key}" for key in self.only_rebuilt[:show]]
        for key, changes in self.differing[:show]:
            lines.append(f"  differs: {key}")
            lines += [f"    {change}" for change in changes]
        hidden = self.count - min(show, len(self.only_live))
        hidden -= min(show, len(self.only_rebuilt)) + min(show, len(self.differing))
        if hidden > 0:
            lines.append(f"  ... and {hidden:,} more (--show N to see more)")
        return lines


def field_changes(live: Any, rebuilt: Any) -> list[str]:
    """`field: live=… rebuilt=…` for every dataclass field that differs."""
    changes = []
    for f in fields(live):
        a, b = getattr(live, f.name), getattr(rebuilt, f.name)
        if a != b:
            changes.append(f"{f.name}: live={to_wire(a)!r} rebuilt={to_wire(b)!r}")
    return changes


def _decoded(raw: bytes, decode: Callable[[bytes], Any]) -> Any:
    try:
        return decode(raw)
    except SchemaError as exc:
        return exc


def compare(
    what: str,
    live: Mapping[bytes, bytes],
    rebuilt: Mapping[bytes, Any],
    decode: Callable[[bytes], Any],
) -> Differences:
    """Live (raw changelog values) against rebuilt (decoded values), key by key."""
    diff = Differences(what)
    for key, raw in live.items():
        name = key.decode(errors="replace")
        mine = rebuilt.get(key)
        if mine is None:
            diff.only_live.append(name)
            continue
        theirs = _decoded(raw, decode)
        if isinstance(theirs, SchemaError):
            diff.differing.append((name, [f"the live value does not decode: {theirs}"]))
        elif theirs == mine:
            diff.equal += 1
        else:
            diff.differing.append((name, field_changes(theirs, mine)))
    diff.only_rebuilt = sorted(k.decode(errors="replace") for k in rebuilt if k not in live)
    return diff


def _user_state(raw: bytes) -> Any:
    return decode_stored_user(raw).state


def _states(users: Mapping[bytes, StoredUser]) -> dict[bytes, Any]:
    return {key: stored.state for key, stored in users.items()}


def _pages(pages: Mapping[bytes, PageState]) -> dict[bytes, Any]:
    return dict(pages)


# ---- main ----------------------------------------------------------------------------------------


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="windowgate replay",
        description="Rebuild every user's state from the events topic alone and compare it with "
        "the window worker's live table (DESIGN.md I8).",
    )
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap, help="Kafka bootstrap")
    parser.add_argument("--prefix", default=settings.topic_prefix, help="topic prefix")
    parser.add_argument(
        "--app-id",
        default=None,
        help="the window worker's app id (default: WINDOW_APP_ID or <prefix>window)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=settings.partitions,
        help="expected partitions of the events topic (default WINDOWGATE_PARTITIONS)",
    )
    parser.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the rebuild with the live table (default: yes)",
    )
    parser.add_argument("--show", type=int, default=20, help="differences shown in detail")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


async def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    topics = Topics(args.prefix)
    found = len(await partitions_of(args.bootstrap, topics.events))
    if found != args.partitions:
        raise ReplayError(
            f"{topics.events} has {found} partitions, expected {args.partitions} "
            "(--partitions / WINDOWGATE_PARTITIONS)"
        )
    rebuilt = await rebuild(args.bootstrap, topics.events, found, err, args.quiet)
    tables = rebuilt.tables
    rate = rebuilt.records / rebuilt.seconds if rebuilt.seconds else 0.0
    out.write(
        f"replay: read {rebuilt.records:,} events from {topics.events} ({found} partitions) in "
        f"{rebuilt.seconds:.1f} s ({rate:,.0f}/s): {len(tables.users):,} users, "
        f"{len(tables.pages):,} pages, {rebuilt.dead_letters:,} records the worker dead-letters\n"
    )
    for problem in rebuilt.problems:
        out.write(f"  dead letter: {problem}\n")
    if not args.compare:
        return EXIT_OK
    app_id = args.app_id or os.environ.get("WINDOW_APP_ID") or f"{args.prefix}window"
    differences = []
    for table, rebuilt_values, decode in (
        (USERS_TABLE, _states(tables.users), _user_state),
        (PAGES_TABLE, _pages(tables.pages), decode_page_state),
    ):
        topic = changelog_topic(app_id, table)
        live = await read_table(args.bootstrap, topic, err, args.quiet)
        diff = compare(f"{table} ({topic})", live, rebuilt_values, decode)
        out.write(diff.summary() + "\n")
        out.writelines(line + "\n" for line in diff.details(args.show))
        differences.append(diff)
    total = sum(d.count for d in differences)
    out.write("no differences\n" if total == 0 else f"{total:,} differences\n")
    return EXIT_OK if total == 0 else EXIT_DIFFERENT


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        err.write(f"windowgate replay: {exc}\n")
        return EXIT_ERROR
    parser = _parser(settings)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_ERROR
    try:
        return asyncio.run(run(args, out, err))
    except ReplayError as exc:
        err.write(f"windowgate replay: {exc}\n")
        return EXIT_ERROR
    except Exception as exc:  # connection failures: aiokafka's errors share no useful base
        err.write(f"windowgate replay: cannot read from Kafka at {args.bootstrap}: {exc!r}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
