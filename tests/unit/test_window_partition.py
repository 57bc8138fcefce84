"""One window partition as a transaction: nothing a batch did counts until it commits.

`WindowPartition` is driven here exactly as `services.common.partitioned` drives it (process, then
committed / rolled_back / released), with records shaped like the consumer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from schemas.decision import decode_decision_record
from schemas.events import PolicyEnforcement, encode_event
from schemas.request import SendRequest, encode_request
from schemas.state import PageState, UserState, decode_page_state
from services.common.partitioned import Outgoing
from services.window.partition import WindowPartition, WindowShared
from services.window.processing import Result, partition_for
from services.window.store import decode_stored_user
from tests.unit.builders import PAGE, T0, USER, H, message, otn
from windowgate.core.rulebook import load_rules

RULES = load_rules()
PARTITIONS = 4
KEY = f"{PAGE}:{USER}".encode()
N = partition_for(KEY, PARTITIONS)
PAGE_KEY = f"{PAGE}:".encode()
NOW = T0 + H


@dataclass
class Rec:
    """The fields of an aiokafka ConsumerRecord the partition reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Harness:
    def __init__(self) -> None:
        self.replica: dict[bytes, PageState] = {}
        self.committed: list[tuple[int, list[Result], dict[bytes, UserState]]] = []
        shared = WindowShared(
            bootstrap="unused:9092",
            partitions=PARTITIONS,
            events_topic="t.events",
            requests_topic="t.send-requests",
            decisions_topic="t.decisions",
            dead_letter_topic="t.dead-letter",
            users_changelog="t.window-users-changelog",
            pages_changelog="t.window-pages-changelog",
            rules=RULES,
            clock=lambda: NOW,
            page_lookup=self.replica.get,
            on_committed=lambda n, results, users, pages: self.committed.append(
                (n, results, users)
            ),
        )
        self.partition = WindowPartition(N, shared)
        self.offsets = {"t.events": 0, "t.send-requests": 0}

    def rec(self, topic: str, key: bytes, value: bytes) -> Rec:
        offset = self.offsets[topic]
        self.offsets[topic] += 1
        return Rec(topic, partition_for(key, PARTITIONS), offset, key, value)

    def event(self, event: Any) -> Rec:
        return self.rec("t.events", event.key.encode(), encode_event(event))

    def request(self, request_id: str, **fields: Any) -> Rec:
        request = SendRequest(
            request_id=request_id, page_id=PAGE, user_id=USER, message={"text": "hi"}, **fields
        )
        return self.rec("t.send-requests", KEY, encode_request(request))


def by_topic(outputs: list[Outgoing], topic: str) -> list[Outgoing]:
    return [o for o in outputs if o.topic == topic]


def test_a_batch_writes_its_outputs_and_one_changelog_record_per_changed_user() -> None:
    h = Harness()
    outputs = h.partition.process(
        [
            h.event(message(T0)),
            h.event(message(T0 + 1, mid="m2")),
            h.event(otn(T0 + 2)),
            h.request("r1", purpose="response"),
        ]
    )
    changelog = by_topic(outputs, "t.window-users-changelog")
    assert [(o.key, o.partition) for o in changelog] == [(KEY, N)]  # one record, its partition
    [decision] = by_topic(outputs, "t.decisions")
    assert decode_decision_record(decision.value or b"").decision.allowed
    assert len(by_topic(outputs, "t.events")) == 1  # RequestDecided, for the replay
    assert h.partition.get_user(KEY) is None  # nothing is the state before the commit
    h.partition.committed({})
    stored = h.partition.get_user(KEY)
    assert stored is not None and stored == decode_stored_user(changelog[0].value or b"")
    assert [d.request_id for d in stored.state.decisions] == ["r1"]
    [(n, results, users)] = h.committed
    assert (n, [r.outcome for r in results], list(users)) == (
        N,
        ["folded", "folded", "folded", "decided"],
        [KEY],
    )


def test_a_rolled_back_batch_leaves_no_trace_and_its_token_is_granted_again() -> None:
    h = Harness()
    h.partition.process([h.event(otn(T0))])
    h.partition.committed({})
    first = h.partition.process([h.request("r1", purpose="otn", topic="restock")])
    [granted] = by_topic(first, "t.decisions")
    assert decode_decision_record(granted.value or b"").decision.token == "otn-1"
    h.partition.rolled_back()  # the transaction failed: the decision was never published
    stored = h.partition.get_user(KEY)
    assert stored is not None and stored.state.decisions == ()
    again = h.partition.process([h.request("r2", purpose="otn", topic="restock")])
    [regranted] = by_topic(again, "t.decisions")
    assert decode_decision_record(regranted.value or b"").decision.token == "otn-1"
    assert len(h.committed) == 1


def test_only_a_clean_release_keeps_the_state() -> None:
    h = Harness()
    h.partition.process([h.event(message(T0))])
    h.partition.committed({})
    h.partition.released(clean=True)
    assert h.partition.keep and h.partition.get_user(KEY) is not None
    h.partition.released(clean=False)  # fenced or failed: it may be stale
    assert not h.partition.keep
    assert h.partition.get_user(KEY) is None and h.partition.positions == {}


def test_a_page_writer_reads_its_own_writes_over_a_lagging_replica() -> None:
    h = Harness()
    block = PolicyEnforcement(page_id=PAGE, user_id="", timestamp=T0, action="block")
    page_partition = partition_for(PAGE_KEY, PARTITIONS)
    h.partition.number = page_partition  # the page key's partition writes the page
    rec = Rec("t.events", page_partition, 0, PAGE_KEY, encode_event(block))
    outputs = h.partition.process([rec])
    [page_record] = by_topic(outputs, "t.window-pages-changelog")
    assert page_record.partition == page_partition
    assert decode_page_state(page_record.value or b"").restricted
    h.partition.committed({})
    h.replica[PAGE_KEY] = PageState(page_id=PAGE)  # the replica has not caught up yet
    refused = h.partition.process([h.request("r1", purpose="response")])
    [decision] = by_topic(refused, "t.decisions")
    assert decode_decision_record(decision.value or b"").decision.reason == "page_restricted"


def test_a_commit_moves_the_catch_up_point_past_the_partitions_own_changelog_records() -> None:
    h = Harness()
    changelog = TopicPartition("t.window-users-changelog", N)
    h.partition.positions = {changelog: 5}  # restored up to 5
    h.partition.process([h.event(message(T0))])
    h.partition.committed({changelog: 9, TopicPartition("t.decisions", N): 3})
    assert h.partition.positions == {changelog: 9}  # a clean re-acquire reads from 9 on
