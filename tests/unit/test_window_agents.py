"""The faust agents in faust's test context (memory store, no broker): they only loop over the
processing steps, so what is checked here is the wiring: records in, table and outputs out."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from schemas.decision import decode_decision_record
from schemas.events import Event, PolicyEnforcement, RequestDecided, decode_event, encode_event
from schemas.request import SendRequest, encode_request
from services.common.settings import Settings
from services.window.app import WindowWorker
from services.window.config import WindowConfig
from services.window.processing import Output
from services.window.store import decode_stored_user
from tests.unit.builders import PAGE, T0, USER, H, message, otn
from windowgate.rulebook import load_rules

KEY = f"{PAGE}:{USER}".encode()
NOW = T0 + H


class Harness:
    def __init__(self, tmp: Path) -> None:
        settings = Settings.from_env(
            {
                "WINDOW_STORE": "memory://",
                "WINDOWGATE_PARTITIONS": "1",  # the test context puts every record in partition 0
                "WINDOW_DATA_DIR": str(tmp),
                "WINDOWGATE_TOPIC_PREFIX": "agents.",
            }
        )
        self.worker = WindowWorker(
            WindowConfig.from_settings(settings), load_rules(), clock=lambda: NOW
        )
        self.outputs: list[Output] = []
        self.worker.sink = self.outputs.append
        self.worker.app.finalize()

    def of(self, topic: str) -> list[bytes]:
        return [o.value for o in self.outputs if o.topic == topic]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def put_events(harness: Harness, *records: Event | tuple[bytes, bytes]) -> None:
    async with harness.worker.events_agent.test_context() as agent:
        for record in records:
            if isinstance(record, Event):
                await agent.put(encode_event(record), key=record.key.encode())
            else:
                await agent.put(record[1], key=record[0])


async def put_requests(harness: Harness, *requests: SendRequest) -> None:
    async with harness.worker.requests_agent.test_context() as agent:
        for request in requests:
            await agent.put(encode_request(request), key=request.key.encode())


async def test_the_events_agent_folds_into_the_users_table(harness: Harness) -> None:
    await put_events(harness, message(T0), otn(T0 + 1))
    state = decode_stored_user(harness.worker.users[KEY]).state
    assert state.last_opener_at == T0
    assert [t.token for t in state.otn] == ["otn-1"]
    assert harness.outputs == []
    assert harness.worker.reach.pending == 1


async def test_a_bad_record_is_dead_lettered_and_the_agent_goes_on(harness: Harness) -> None:
    await put_events(harness, (KEY, b"\xff not json"), message(T0))
    [letter] = harness.of("dead_letter")
    assert orjson.loads(letter)["source"]["topic"] == "agents.events"
    assert decode_stored_user(harness.worker.users[KEY]).state.last_opener_at == T0


async def test_page_events_go_to_the_global_table_and_refuse_requests(harness: Harness) -> None:
    block = PolicyEnforcement(page_id=PAGE, user_id="", timestamp=T0, action="block")
    await put_events(harness, block, message(T0))
    assert harness.worker.page_state(PAGE) is not None
    await put_requests(harness, SendRequest(request_id="r1", page_id=PAGE, user_id=USER))
    [raw] = harness.of("decisions")
    decision = decode_decision_record(raw).decision
    assert (decision.allowed, decision.reason) == (False, "page_restricted")


async def test_the_requests_agent_decides_records_and_emits(harness: Harness) -> None:
    await put_events(harness, message(T0), otn(T0 + 1, token="tok-1"))
    await put_requests(
        harness,
        SendRequest(request_id="r1", page_id=PAGE, user_id=USER, purpose="otn", topic="restock"),
        SendRequest(request_id="r2", page_id=PAGE, user_id=USER, purpose="otn", topic="restock"),
        SendRequest(request_id="r1", page_id=PAGE, user_id=USER, purpose="otn", topic="restock"),
    )
    decisions = [decode_decision_record(raw).decision for raw in harness.of("decisions")]
    assert [(d.request_id, d.allowed, d.duplicate) for d in decisions] == [
        ("r1", True, False),
        ("r2", False, False),
        ("r1", True, True),
    ]
    assert decisions[0].token == "tok-1"
    decided = [decode_event(raw) for raw in harness.of("events")]
    assert [e.decision.request_id for e in decided if isinstance(e, RequestDecided)] == ["r1", "r2"]
    stored = decode_stored_user(harness.worker.users[KEY])
    assert [(t.token, t.status, t.request_id) for t in stored.state.otn] == [
        ("tok-1", "reserved", "r1")
    ]
    assert stored.request_offset == 1  # offsets 0, 1, 2; the duplicate (2) writes nothing


async def test_the_reach_index_sees_the_agents_changes(harness: Harness) -> None:
    await put_events(harness, message(T0), otn(T0 + 1))
    reach = harness.worker.reach
    reach.complete_partition(0)
    reach.flush(NOW)
    [counts] = reach.partials(PAGE, NOW).values()
    assert counts["users:RESPONSE"] == 1
    assert counts["otn_users:restock"] == 1
