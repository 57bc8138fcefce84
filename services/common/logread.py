"""Reading topic partitions to their end, read_committed: restores, replicas and replays.

"The end" is the last stable offset found when the read starts: with read_committed, records of
transactions still open or aborted are never returned, and reading stops at the first offset an
open transaction holds. The position, not the last record seen, tells when the end is reached:
compaction and transaction markers leave offsets that carry no record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

Record: TypeAlias = ConsumerRecord[bytes, bytes]


class AheadOfLog(RuntimeError):
    """A start offset lies past the partition's end: the log is not the one the caller knew
    (another cluster, a recreated topic). The caller throws its copy away and reads from the
    start."""


def reader(bootstrap: str, **extra: object) -> AIOKafkaConsumer:
    """A group-less read_committed consumer for reading partitions from chosen offsets."""
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 64 * 1024 * 1024,
    }
    settings.update(extra)
    return AIOKafkaConsumer(**settings)


async def read_to_end(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int | None],
    on_records: Callable[[Sequence[Record]], None],
    timeout_s: float = 300.0,
    batch: int = 20_000,
) -> dict[TopicPartition, int]:
    """Feed every record from `starts` (None: the first offset) to the end found now, partition by
    partition in offset order. `consumer` must be started and hold (at least) these partitions.
    Returns the position reached in each partition (where a later read can go on from)."""
    tps = list(starts)
    if not tps:
        return {}
    consumer.assign(tps)
    firsts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    reached: dict[TopicPartition, int] = {}
    wanted: dict[TopicPartition, int] = {}
    for tp in tps:
        start = starts[tp]
        start = firsts[tp] if start is None or start < firsts[tp] else start
        if start > ends[tp]:
            raise AheadOfLog(f"{tp.topic}[{tp.partition}]: offset {start} > end {ends[tp]}")
        if start == ends[tp]:
            reached[tp] = start
            consumer.pause(tp)
            continue
        consumer.seek(tp, start)
        wanted[tp] = ends[tp]
    deadline = time.monotonic() + timeout_s
    while wanted:
        fetched = await consumer.getmany(*wanted, timeout_ms=500, max_records=batch)
        for tp, records in fetched.items():
            end = wanted.get(tp)
            if end is not None:
                on_records([r for r in records if r.offset < end])
        for tp, end in list(wanted.items()):
            position = await consumer.position(tp)
            if position >= end:
                reached[tp] = position
                del wanted[tp]
                consumer.pause(tp)
        if wanted and time.monotonic() > deadline:
            raise TimeoutError(
                f"read_committed did not reach the end of {sorted(map(str, wanted))} in "
                f"{timeout_s:.0f} s (a transaction left open by a stalled producer holds it)"
            )
    return reached
