"""The window worker's steps without faust: fold, decide, dead letters, duplicates and replays."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.decision import decode_decision_record
from schemas.events import (
    Event,
    MessageRead,
    PolicyEnforcement,
    RequestDecided,
    decode_event,
    encode_event,
)
from schemas.request import SendRequest, encode_request
from schemas.state import PageState, UserState
from services.window.processing import (
    Result,
    Source,
    partition_for,
    process_event_record,
    process_request_record,
)
from services.window.store import (
    BytesTables,
    StoredUser,
    decode_stored_user,
    encode_stored_user,
)
from tests.fixtures_path import fixtures_dir
from tests.unit.builders import PAGE, T0, USER, H, message, otn
from tests.unit.test_properties import order_free_events
from windowgate.core.rulebook import load_rules
from windowgate.meta.normalise import normalise
from windowgate.offline import OfflineGateway

RULES = load_rules()
KEY = f"{PAGE}:{USER}".encode()
NOW = T0 + 2 * H
PARTITIONS = 8


class CountingDict(dict[bytes, bytes]):
    """A dict that counts writes: a table write is a changelog record in the worker."""

    writes = 0

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes += 1
        super().__setitem__(key, value)


class Worker:
    """The two steps over dict tables, feeding records the way a partition would."""

    def __init__(self, partitions: int = 0) -> None:
        self.users = CountingDict()
        self.pages = CountingDict()
        self.tables = BytesTables(self.users, self.pages)
        self.partitions = partitions
        self.offsets = {"events": 0, "send-requests": 0}

    def source(self, topic: str, key: bytes | None, offset: int | None = None) -> Source:
        if offset is None:
            offset = self.offsets[topic]
            self.offsets[topic] += 1
        partition = partition_for(key, self.partitions) if key and self.partitions else 0
        return Source(topic, partition, offset)

    def event(self, event: Event, key: bytes | None = None) -> Result:
        key = event.key.encode() if key is None else key
        return self.raw_event(key, encode_event(event))

    def raw_event(self, key: bytes | None, value: bytes | None, **kw: Any) -> Result:
        source = kw.pop("source", None) or self.source("events", key)
        return process_event_record(self.tables, key, value, source, NOW, self.partitions)

    def request(self, request: SendRequest, offset: int | None = None, now: int = NOW) -> Result:
        key = request.key.encode()
        source = self.source("send-requests", key, offset)
        return process_request_record(
            self.tables, key, encode_request(request), source, now, RULES, self.partitions
        )

    def state(self, key: bytes = KEY) -> UserState:
        stored = self.tables.get_user(key)
        assert stored is not None
        return stored.state


def req(request_id: str, **fields: Any) -> SendRequest:
    fields.setdefault("message", {"text": "back in stock"})
    return SendRequest(request_id=request_id, page_id=PAGE, user_id=USER, **fields)


def decisions_of(result: Result) -> list[Any]:
    return [
        decode_decision_record(o.value).decision for o in result.outputs if o.topic == "decisions"
    ]


def events_of(result: Result) -> list[Event]:
    return [decode_event(o.value) for o in result.outputs if o.topic == "events"]


def dead_letters_of(result: Result) -> list[dict[str, Any]]:
    return [orjson.loads(o.value) for o in result.outputs if o.topic == "dead_letter"]


# ---- events -------------------------------------------------------------------------------------


def test_the_fixtures_fold_into_the_same_states_as_the_offline_gateway() -> None:
    worker = Worker(PARTITIONS)
    offline = OfflineGateway(RULES)
    for path in sorted(fixtures_dir("meta-webhooks").glob("*.json")):
        for event in normalise(orjson.loads(path.read_bytes())).events:
            result = worker.event(event)
            assert result.outcome in ("folded", "unchanged", "page"), result.problem
            offline.apply_event(event)
    assert offline.users, "the fixtures hold user events"
    for key, state in offline.users.items():
        if state != UserState(
            page_id=state.page_id, user_id=state.user_id, platform=state.platform
        ):
            assert worker.state(key.encode()) == state
    assert {k.decode(): v for k, v in worker.pages.items()} != {}
    for page_id, page in offline.pages.items():
        assert worker.tables.get_page(f"{page_id}:".encode()) == page


def test_an_event_that_changes_nothing_writes_nothing() -> None:
    worker = Worker()
    assert worker.event(message(T0)).outcome == "folded"
    written = worker.users.writes
    read = MessageRead(page_id=PAGE, user_id=USER, timestamp=T0 + H, watermark=T0)
    assert worker.event(read).outcome == "unchanged"
    assert worker.event(message(T0)).outcome == "unchanged"  # a redelivery
    assert worker.users.writes == written
    assert worker.event(read, key=b"other:user").outcome == "dead_letter"


def test_a_read_from_a_user_never_seen_creates_no_state() -> None:
    worker = Worker()
    worker.event(MessageRead(page_id=PAGE, user_id=USER, timestamp=T0, watermark=T0))
    assert worker.users == {}


def test_page_events_fold_into_the_page_table() -> None:
    worker = Worker(PARTITIONS)
    block = PolicyEnforcement(page_id=PAGE, user_id="", timestamp=T0, action="block", reason="spam")
    assert worker.event(block).outcome == "page"
    assert worker.users == {}
    page = worker.tables.get_page(f"{PAGE}:".encode())
    assert page == PageState(page_id=PAGE, blocked_at=T0, block_reason="spam")
    worker.event(message(T0 + H))
    decision = decisions_of(worker.request(req("r1")))[0]
    assert (decision.allowed, decision.reason) == (False, "page_restricted")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (KEY, None, "record has no value"),
        (KEY, b"{not json", "malformed record: event is not valid JSON"),
        (KEY, b'{"v": 1, "kind": "telepathy"}', "malformed record: kind: unknown event kind"),
        (None, encode_event(message(T0)), "record has no key"),
        (b"682498171943165:someone-else", encode_event(message(T0)), "record key "),
    ],
)
def test_bad_event_records_are_dead_lettered_and_change_nothing(
    key: bytes | None, value: bytes | None, problem: str
) -> None:
    worker = Worker()
    result = worker.raw_event(key, value)
    assert result.outcome == "dead_letter"
    assert result.problem is not None and result.problem.startswith(problem)
    [letter] = dead_letters_of(result)
    assert letter["service"] == "window"
    assert letter["reason"] == result.problem
    assert letter["source"]["topic"] == "events"
    assert worker.users == {} and worker.pages == {}


def test_a_record_in_the_wrong_partition_is_dead_lettered() -> None:
    """Another partitioner would give the user two writers (I1): refuse, do not fold."""
    worker = Worker(PARTITIONS)
    right = partition_for(KEY, PARTITIONS)
    wrong = Source("events", (right + 1) % PARTITIONS, 0)
    result = worker.raw_event(KEY, encode_event(message(T0)), source=wrong)
    assert result.outcome == "dead_letter"
    assert result.problem is not None and f"puts that key in partition {right}" in result.problem
    assert worker.users == {}


def test_partition_for_is_kafkas_default_partitioner() -> None:
    rng = random.Random(5)
    for _ in range(200):
        key = f"{rng.randrange(10**15)}:{rng.randrange(10**16)}".encode()
        assert partition_for(key, 8) == DefaultPartitioner()(key, list(range(8)), [])


def test_a_failing_core_call_becomes_a_dead_letter() -> None:
    class BrokenTables(BytesTables):
        def get_user(self, key: bytes) -> StoredUser | None:
            raise RuntimeError("disk on fire")

    tables = BrokenTables({}, {})
    result = process_event_record(
        tables, KEY, encode_event(message(T0)), Source("events", 0, 7), NOW
    )
    assert result.outcome == "dead_letter"
    assert result.problem == "could not process: RuntimeError: disk on fire"


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(order_free_events(), max_size=20), st.randoms(), st.data())
def test_duplicated_and_shuffled_events_leave_the_same_stored_state(
    events: list[Event], rnd: Any, data: Any
) -> None:
    """I2 through the worker's own step, encoding included."""
    in_order = Worker()
    for event in events:
        in_order.event(event)
    messy = list(events)
    if events:
        messy += data.draw(st.lists(st.sampled_from(events), max_size=10))
    rnd.shuffle(messy)
    shuffled = Worker()
    for event in messy:
        shuffled.event(event)
    assert shuffled.users == in_order.users


# ---- send requests ------------------------------------------------------------------------------


def test_an_otn_token_is_granted_to_exactly_one_request() -> None:
    worker = Worker(PARTITIONS)
    worker.event(otn(T0, token="tok-1", topic="restock"))
    first = worker.request(req("r1", purpose="otn", topic="restock"))
    second = worker.request(req("r2", purpose="otn", topic="restock"))
    [granted] = decisions_of(first)
    [refused] = decisions_of(second)
    assert (granted.allowed, granted.token, granted.duplicate) == (True, "tok-1", False)
    assert (refused.allowed, refused.reason) == (False, "token_spent")
    [token] = worker.state().otn
    assert (token.status, token.request_id) == ("reserved", "r1")
    record = decode_decision_record(first.outputs[0].value)
    assert record.message == {"text": "back in stock"}
    assert first.outputs[0].key == KEY


def test_a_decision_is_also_written_to_the_events_topic_and_folds_back_to_nothing() -> None:
    """The events topic alone must rebuild the table (I8): it carries every decision."""
    worker = Worker()
    worker.event(otn(T0))
    result = worker.request(req("r1", purpose="otn", topic="restock"))
    [decided] = events_of(result)
    assert isinstance(decided, RequestDecided)
    assert decided.decision == decisions_of(result)[0]
    assert decided.timestamp == decided.decision.decided_at
    assert [o.key for o in result.outputs] == [KEY, KEY]
    before = worker.users[KEY]
    assert worker.event(decided).outcome == "unchanged"
    assert worker.users[KEY] == before

    rebuilt = Worker()
    rebuilt.event(otn(T0))
    rebuilt.event(decided)
    assert rebuilt.state() == worker.state()


def test_a_repeated_request_id_gets_its_first_decision_marked_duplicate() -> None:
    worker = Worker()
    worker.event(otn(T0))
    first = decisions_of(worker.request(req("r1", purpose="otn", topic="restock")))[0]
    writes = worker.users.writes
    again = worker.request(req("r1", purpose="otn", topic="restock"), now=NOW + H)
    assert again.outcome == "duplicate"
    [duplicate] = decisions_of(again)
    assert duplicate == first.as_duplicate()
    assert events_of(again) == []
    assert worker.users.writes == writes


def test_an_unknown_user_is_decided_and_remembered() -> None:
    worker = Worker()
    result = worker.request(req("r1", platform="instagram"))
    [decision] = decisions_of(result)
    assert (decision.allowed, decision.reason) == (False, "window_closed")
    state = worker.state()
    assert state.platform == "instagram"
    assert [d.request_id for d in state.decisions] == ["r1"]
    assert decode_stored_user(worker.users[KEY]).request_offset == 0


def test_a_redelivered_request_re_emits_its_first_decision_without_deciding_again() -> None:
    """A redelivered record whose state change is in the state (e.g. a replay over a kept
    state): the dispatcher must still see the first decision, not a duplicate."""
    worker = Worker()
    worker.event(otn(T0, token="tok-1"))
    worker.event(otn(T0 + 1, token="tok-2"))
    first = worker.request(req("r1", purpose="otn", topic="restock"), offset=40)
    state = worker.users[KEY]
    replay = worker.request(req("r1", purpose="otn", topic="restock"), offset=40, now=NOW + H)
    assert replay.outcome == "replayed"
    assert replay.outputs == first.outputs  # byte for byte: the same decision and event
    assert worker.users[KEY] == state  # tok-2 was not reserved by a second decision
    assert decode_stored_user(worker.users[KEY]).request_offset == 40


def test_a_redelivery_whose_state_change_was_lost_is_decided_again_the_same_way() -> None:
    worker = Worker()
    worker.event(otn(T0, token="tok-1"))
    before = dict(worker.users)
    first = decisions_of(worker.request(req("r1", purpose="otn", topic="restock"), offset=3))[0]
    worker.users.clear()
    worker.users.update(before)  # the crash lost the write (and maybe the outputs)
    second = decisions_of(worker.request(req("r1", purpose="otn", topic="restock"), offset=3))[0]
    assert (second.allowed, second.token, second.duplicate) == (True, first.token, False)


def test_a_redelivery_whose_decision_is_forgotten_is_not_decided_again() -> None:
    worker = Worker()
    worker.event(otn(T0))
    worker.request(req("r1", purpose="otn", topic="restock"), offset=9)
    stored = decode_stored_user(worker.users[KEY])
    forgetful = StoredUser(UserState(page_id=PAGE, user_id=USER), stored.request_offset)
    worker.users[KEY] = encode_stored_user(forgetful)
    result = worker.request(req("r7", purpose="otn", topic="restock"), offset=5)
    assert result.outcome == "dead_letter"
    assert result.problem is not None and "no longer remembered" in result.problem
    assert decisions_of(result) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"[]", "malformed record"),
        (b'{"v":1,"request_id":"","page_id":"p","user_id":"u"}', "malformed record: "),
        (b'{"v":1,"request_id":"r","page_id":"p","user_id":"u","purpose":"nag"}', "malformed"),
    ],
)
def test_bad_requests_are_dead_lettered(value: bytes, problem: str) -> None:
    worker = Worker()
    result = process_request_record(
        worker.tables, b"p:u", value, Source("send-requests", 0, 0), NOW, RULES
    )
    assert result.outcome == "dead_letter"
    assert result.problem is not None and result.problem.startswith(problem)
    assert worker.users == {}


def test_a_request_keyed_for_another_user_is_dead_lettered() -> None:
    worker = Worker()
    value = encode_request(req("r1"))
    result = process_request_record(
        worker.tables, b"p:someone", value, Source("send-requests", 0, 0), NOW, RULES
    )
    assert result.outcome == "dead_letter"
    assert worker.users == {}


def test_the_stored_user_round_trips_and_stays_readable_as_a_user_state() -> None:
    worker = Worker()
    worker.event(message(T0))
    worker.request(req("r1"), offset=12)
    raw = worker.users[KEY]
    stored = decode_stored_user(raw)
    assert stored.request_offset == 12
    assert encode_stored_user(stored) == raw
    from schemas.state import decode_user_state

    assert decode_user_state(raw) == stored.state


def test_a_misspelt_request_is_refused_with_the_field_named_and_nothing_remembered() -> None:
    worker = Worker()
    worker.event(otn(T0, token="tok-1"))
    raw = orjson.dumps(
        {"v": 1, "request_id": "r1", "page_id": PAGE, "user_id": USER, "purpse": "otn"}
    )
    result = process_request_record(
        worker.tables, KEY, raw, worker.source("send-requests", KEY), NOW, RULES
    )
    [decision] = decisions_of(result)
    assert (decision.request_id, decision.allowed, decision.reason) == (
        "r1",
        False,
        "invalid_request",
    )
    assert "purpse" in decision.detail
    assert [o.topic for o in result.outputs] == ["decisions", "dead_letter"]
    assert worker.state().decisions == ()  # the corrected request may reuse r1
    fixed = worker.request(req("r1", purpose="otn", topic="restock"))
    assert decisions_of(fixed)[0].allowed


def test_a_request_that_does_not_say_whose_it_is_is_only_dead_lettered() -> None:
    worker = Worker()
    raw = orjson.dumps({"v": 1, "request_id": "r1", "purpose": "otn"})
    result = process_request_record(
        worker.tables, KEY, raw, worker.source("send-requests", KEY), NOW, RULES
    )
    assert [o.topic for o in result.outputs] == ["dead_letter"]
