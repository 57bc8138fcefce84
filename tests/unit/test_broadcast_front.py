"""The broadcast API on the dispatcher's front, without a broker: what a body must be (a 400 names
the field), how the partitions' progress sums into one status, and the routes as a caller sees
them (202 / 200 / 409 / 404, the commands written, the dry run asked of the window)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schemas.broadcast import BroadcastCommand, BroadcastProgress, BroadcastSpec
from schemas.codec import SchemaError
from schemas.request import SendRequest
from schemas.topics import Topics
from services.dispatcher.front.broadcasts import (
    BroadcastBook,
    BroadcastFront,
    CommandWriter,
    DryRunFailed,
    WindowDryRun,
    combined_status,
    implied_status,
    message_problem,
    parse_submission,
    summarize,
)
from tests.unit.builders import PAGE, H
from tests.unit.front_kit import API_TOKEN, NOW, in_process_front
from windowgate.client import HttpError, HttpGateway
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules
from windowgate.core.timestamps import parse_iso_ms

PAGES = {PAGE: PageConfig(page_id=PAGE)}
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def body(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "broadcast_id": "b1",
        "page_id": PAGE,
        "message": {"text": "Your size is back"},
        "purpose": "otn",
        "audience": {"topic": "restock"},
    }
    base.update(kw)
    return base


def parse(data: Any) -> BroadcastSpec:
    return parse_submission(data, now=NOW, pages=PAGES, new_id=lambda: "generated").spec


# ---- the body ------------------------------------------------------------------------------


def test_a_good_body_becomes_the_spec_with_not_before_in_ms() -> None:
    submission = parse_submission(
        body(not_before="2026-12-01T09:00:00Z", dry_run=True), now=NOW, pages=PAGES
    )
    spec = submission.spec
    assert submission.dry_run is True
    assert spec.not_before == parse_iso_ms("2026-12-01T09:00:00Z")
    assert spec.created_at == NOW
    assert (spec.purpose, spec.audience.topic) == ("otn", "restock")


def test_an_absent_broadcast_id_is_generated() -> None:
    data = body()
    del data["broadcast_id"]
    assert parse(data).broadcast_id == "generated"
    assert parse_submission(data, now=NOW, pages=PAGES).spec.broadcast_id.startswith("bc-")


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"audience": {"topc": "restock"}}, "audience.topc"),
        ({"purpse": "otn"}, "purpse"),
        ({"page_id": "999"}, "page_id"),
        ({"purpose": "response"}, "audience.topic"),  # a topic selects token holders
        ({"purpose": "update"}, "audience.topic"),
        ({"purpose": "otn", "audience": {"labels_any": ["vip"]}}, "audience.topic"),
        ({"purpose": "recurring", "audience": {"users": ["u1"]}}, "audience.topic"),
        ({"purpose": "human_agent", "audience": {"labels_any": ["vip"]}}, "purpose"),
        ({"purpose": "tag", "audience": {"labels_any": ["vip"]}}, "purpose"),
        ({"purpose": "auto", "audience": {}}, "audience"),
        ({"purpose": "auto", "audience": {"users": []}}, "audience.users"),
        ({"purpose": "auto", "audience": {"labels_all": [""]}}, "audience.labels_all.0"),
        ({"message": {}}, "message"),
        ({"message": "hello"}, "message"),
        ({"message": {"txt": "hello"}}, "message.txt"),
        ({"message": {"text": "x" * 2000}}, "message.text"),
        ({"message": {"text": "a", "attachment": {"type": "image", "payload": {}}}}, "message"),
        ({"message": {"attachment": {"type": "gif", "payload": {}}}}, "message.attachment.type"),
        ({"purpose": "utility", "audience": {"labels_any": ["v"]}}, "message.template.name"),
        ({"not_before": "next tuesday"}, "not_before"),
        ({"not_before": 1_790_000_000_000}, "not_before"),  # ISO 8601 on the HTTP side
        ({"broadcast_id": "a:b"}, "broadcast_id"),
        ({"broadcast_id": ""}, "broadcast_id"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"created_at": 5}, "created_at"),
    ],
)
def test_bad_input_names_the_field(change: dict[str, Any], field_name: str) -> None:
    with pytest.raises(SchemaError) as caught:
        parse(body(**change))
    assert caught.value.field == field_name, caught.value


def test_an_explicit_user_list_too_large_for_one_record_is_refused() -> None:
    users = [str(10**15 + n) for n in range(60_000)]
    with pytest.raises(SchemaError) as caught:
        parse(body(purpose="auto", audience={"users": users}))
    assert caught.value.field == "audience.users"


@pytest.mark.parametrize(
    "message",
    [
        {"text": "hi", "quick_replies": [{"content_type": "text", "title": "Yes"}]},
        {"attachment": {"type": "template", "payload": {"template_type": "button"}}},
        {"attachments": [{"type": "image", "payload": {"url": "https://x/y.png"}}]},
        {"template": {"name": "order_shipped"}},
    ],
)
def test_graph_messages_that_are_fine(message: dict[str, Any]) -> None:
    assert message_problem(message) is None


# ---- the status ----------------------------------------------------------------------------


def progress(partition: int, status: Any, **kw: Any) -> BroadcastProgress:
    return BroadcastProgress(
        broadcast_id="b1", page_id=PAGE, partition=partition, status=status, **kw
    )


def test_the_status_sums_every_partition() -> None:
    spec = parse(body())
    parts = {
        0: progress(
            0,
            "done",
            audience=10,
            decided=10,
            by_mechanism={"OTN": 8},
            refused={"token_expired": 2},
            sent=7,
            failed=1,
            delivered=5,
            read=2,
            created_at=NOW + 5,
            started_at=NOW + 10,
            finished_at=NOW + 50,
        ),
        1: progress(
            1,
            "running",
            audience=20,
            decided=5,
            by_mechanism={"OTN": 4, "RESPONSE": 1},
            refused={"token_expired": 1, "opted_out": 3},
            sent=4,
            unknown=1,
            started_at=NOW + 7,
        ),
    }
    view = summarize("b1", spec=spec, progress=parts, partitions=2, last="create", now=NOW)
    assert view["status"] == "running"
    assert (view["audience"], view["decided"], view["sent"]) == (30, 15, 11)
    assert (view["failed"], view["unknown"], view["delivered"], view["read"]) == (1, 1, 5, 2)
    assert view["by_mechanism"] == {"OTN": 12, "RESPONSE": 1}
    assert view["refused"] == {"opted_out": 3, "token_expired": 3}
    assert (view["created_at"], view["started_at"]) == (NOW, NOW + 7)
    assert view["finished_at"] is None  # not finished while a partition runs
    assert view["partitions"] == {
        "total": 2,
        "reported": 2,
        "by_status": {"done": 1, "running": 1},
    }


def test_finished_at_is_the_last_partition_to_finish() -> None:
    parts = {
        0: progress(0, "done", finished_at=NOW + 5),
        1: progress(1, "done", finished_at=NOW + 9),
    }
    view = summarize("b1", spec=None, progress=parts, partitions=2, last=None, now=NOW)
    assert (view["status"], view["finished_at"], view["page_id"]) == ("done", NOW + 9, PAGE)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["running", "paused", "done"], "running"),
        (["paused", "done"], "paused"),
        (["scheduled", "done"], "scheduled"),
        (["done", "cancelled"], "cancelled"),
        (["cancelled", "cancelled"], "cancelled"),
        (["done", "done"], "done"),
    ],
)
def test_combined_status(states: list[Any], expected: str) -> None:
    assert combined_status(states) == expected


def test_a_partition_that_has_not_reported_counts_as_the_last_command_says() -> None:
    assert implied_status("create", NOW + H, NOW) == "scheduled"
    assert implied_status("create", NOW - H, NOW) == "running"
    assert implied_status("pause", None, NOW) == "paused"
    assert implied_status("resume", NOW + H, NOW) == "running"
    assert implied_status("cancel", None, NOW) == "cancelled"
    parts = {0: progress(0, "done")}
    view = summarize("b1", spec=parse(body()), progress=parts, partitions=4, last="pause", now=NOW)
    assert view["status"] == "paused"
    assert view["partitions"]["by_status"] == {"done": 1, "paused": 3}


def test_the_book_keeps_the_first_spec_the_last_command_and_the_latest_progress() -> None:
    book = BroadcastBook("unused:9092", Topics("t."))
    spec = parse(body())
    other = parse(body(message={"text": "another"}))
    book.apply_command(
        BroadcastCommand(kind="create", broadcast_id="b1", page_id=PAGE, at=1, spec=spec)
    )
    book.apply_command(
        BroadcastCommand(kind="create", broadcast_id="b1", page_id=PAGE, at=2, spec=other)
    )
    book.apply_command(BroadcastCommand(kind="pause", broadcast_id="b1", page_id=PAGE, at=5))
    book.apply_command(BroadcastCommand(kind="resume", broadcast_id="b1", page_id=PAGE, at=3))
    book.apply_progress("b1:0", progress(0, "running", decided=1))
    book.apply_progress("b1:0", progress(0, "paused", decided=4))
    book.apply_progress("b1:1", progress(1, "paused"))
    book.apply_progress("b1:1", None)  # a tombstone
    book.apply_progress("garbage", progress(1, "paused"))
    known = book.get("b1")
    assert known is not None and known.spec == spec
    assert known.last is not None and known.last.kind == "pause"  # by `at`, not arrival
    assert list(known.progress) == [0] and known.progress[0].decided == 4
    assert book.unreadable == 1


# ---- the routes ----------------------------------------------------------------------------


@dataclass
class Fakes:
    written: list[BroadcastCommand] = field(default_factory=list)
    dry_runs: list[BroadcastSpec] = field(default_factory=list)
    broker_down: bool = False
    window_down: bool = False

    async def write(self, command: BroadcastCommand) -> int:
        if self.broker_down:
            raise ConnectionError("no broker")
        self.written.append(command)
        return 4

    async def dry_run(self, spec: BroadcastSpec) -> dict[str, Any]:
        if self.window_down:
            raise DryRunFailed(503, {"error": "unavailable", "detail": "the window is away"})
        self.dry_runs.append(spec)
        return {"audience": 3, "by_mechanism": {"OTN": 2}, "refused": {"token_expired": 1}}


async def no_messages(request: SendRequest) -> None:
    raise AssertionError(f"a broadcast route published a message: {request}")


@pytest.fixture
async def front() -> AsyncIterator[tuple[TestClient[Any, Any], Fakes, BroadcastBook]]:
    rules = load_rules(None, PAGES)
    fakes = Fakes()
    book = BroadcastBook("unused:9092", Topics("t."))
    book.is_caught_up = True
    broadcasts = BroadcastFront(
        book=book,
        write=fakes.write,
        dry_run=fakes.dry_run,
        pages=lambda: rules.pages,
        partitions=4,
        clock=lambda: NOW,
        wait_s=0.5,
    )
    api = in_process_front(rules, wait_s=0.5, publish=no_messages, broadcasts=broadcasts)
    async with TestClient(TestServer(api.app())) as client:
        yield client, fakes, book


async def test_create_writes_one_create_and_answers_202_then_200_for_the_same_spec(
    front: Any,
) -> None:
    client, fakes, _ = front
    answer = await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    assert answer.status == 202
    data = await answer.json()
    assert data["broadcast_id"] == "b1" and data["created"] is True
    assert data["status_url"] == "/v1/broadcasts/b1" == answer.headers["Location"]
    [command] = fakes.written
    assert (command.kind, command.broadcast_id, command.at) == ("create", "b1", NOW)
    assert command.spec is not None and command.spec.audience.topic == "restock"

    again = await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    assert again.status == 200 and (await again.json())["created"] is False
    assert len(fakes.written) == 1  # nothing new

    other = await client.post(
        "/v1/broadcasts", json=body(message={"text": "changed"}), headers=AUTH
    )
    assert other.status == 409
    assert (await other.json())["field"] == "message"
    assert len(fakes.written) == 1


async def test_status_right_after_create_then_from_the_progress(front: Any) -> None:
    client, _, book = front
    await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    first = await (await client.get("/v1/broadcasts/b1", headers=AUTH)).json()
    assert (first["status"], first["audience"], first["partitions"]["reported"]) == (
        "running",
        0,
        0,
    )
    for n in range(4):
        book.apply_progress(f"b1:{n}", progress(n, "done", audience=2, decided=2, sent=2))
    view = await (await client.get("/v1/broadcasts/b1", headers=AUTH)).json()
    assert (view["status"], view["audience"], view["sent"]) == ("done", 8, 8)


async def test_bad_input_is_a_400_naming_the_field(front: Any) -> None:
    client, fakes, _ = front
    answer = await client.post(
        "/v1/broadcasts", json=body(audience={"topic": "r", "lables_any": ["x"]}), headers=AUTH
    )
    assert answer.status == 400
    data = await answer.json()
    assert data["field"] == "audience.lables_any" and "labels_any" in data["detail"]
    not_json = await client.post("/v1/broadcasts", data=b"{", headers=AUTH)
    assert not_json.status == 400
    assert fakes.written == []


async def test_unknown_ids_are_404_and_every_route_needs_the_token(front: Any) -> None:
    client, _, _ = front
    assert (await client.get("/v1/broadcasts/nope", headers=AUTH)).status == 404
    assert (await client.post("/v1/broadcasts/nope/pause", headers=AUTH)).status == 404
    assert (await client.delete("/v1/broadcasts/nope", headers=AUTH)).status == 404
    for method, path in [
        ("POST", "/v1/broadcasts"),
        ("GET", "/v1/broadcasts"),
        ("GET", "/v1/broadcasts/b1"),
        ("POST", "/v1/broadcasts/b1/pause"),
        ("POST", "/v1/broadcasts/b1/resume"),
        ("DELETE", "/v1/broadcasts/b1"),
    ]:
        assert (await client.request(method, path)).status == 401


async def test_pause_resume_cancel_write_their_commands(front: Any) -> None:
    client, fakes, _ = front
    await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    for method, path, kind in [
        ("POST", "/v1/broadcasts/b1/pause", "pause"),
        ("POST", "/v1/broadcasts/b1/resume", "resume"),
        ("DELETE", "/v1/broadcasts/b1", "cancel"),
    ]:
        answer = await client.request(method, path, headers=AUTH)
        assert answer.status == 202
        assert (await answer.json())["partitions"] == 4
        assert fakes.written[-1].kind == kind and fakes.written[-1].page_id == PAGE
    view = await (await client.get("/v1/broadcasts/b1", headers=AUTH)).json()
    assert view["status"] == "cancelled"
    assert (await client.post("/v1/broadcasts/b1/resume", headers=AUTH)).status == 409


async def test_a_write_that_fails_is_503_and_leaves_no_broadcast(front: Any) -> None:
    client, fakes, _ = front
    fakes.broker_down = True
    answer = await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    assert answer.status == 503 and answer.headers["Retry-After"]
    assert (await client.get("/v1/broadcasts/b1", headers=AUTH)).status == 404


async def test_a_dry_run_asks_the_window_and_writes_nothing(front: Any) -> None:
    client, fakes, _ = front
    answer = await client.post("/v1/broadcasts", json=body(dry_run=True), headers=AUTH)
    assert answer.status == 200
    data = await answer.json()
    assert (data["audience"], data["by_mechanism"], data["refused"]) == (
        3,
        {"OTN": 2},
        {"token_expired": 1},
    )
    assert fakes.written == [] and fakes.dry_runs[0].audience.topic == "restock"
    fakes.window_down = True
    down = await client.post("/v1/broadcasts", json=body(dry_run=True), headers=AUTH)
    assert down.status == 503


async def test_the_list_is_per_page_newest_first(front: Any) -> None:
    client, _, book = front
    await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    older = replace(parse(body(broadcast_id="b0")), created_at=NOW - H)
    book.apply_command(
        BroadcastCommand(kind="create", broadcast_id="b0", page_id=PAGE, at=NOW - H, spec=older)
    )
    listed = await (await client.get(f"/v1/broadcasts?page_id={PAGE}", headers=AUTH)).json()
    assert [b["broadcast_id"] for b in listed["broadcasts"]] == ["b1", "b0"]
    every = await (await client.get("/v1/broadcasts", headers=AUTH)).json()
    assert len(every["broadcasts"]) == 2
    unknown = await client.get("/v1/broadcasts?page_id=999", headers=AUTH)
    assert unknown.status == 400 and (await unknown.json())["field"] == "page_id"


async def test_nothing_is_answered_from_a_book_still_reading(front: Any) -> None:
    client, fakes, book = front
    book.is_caught_up = False
    answer = await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    assert answer.status == 503
    assert (await client.get("/v1/broadcasts/b1", headers=AUTH)).status == 503
    assert fakes.written == []


# ---- the client library against these routes ----------------------------------------------


async def test_the_http_gateway_drives_every_route(front: Any) -> None:
    client, fakes, book = front
    async with HttpGateway(str(client.make_url("")), API_TOKEN) as gateway:
        dry = await gateway.create_broadcast(body(dry_run=True))
        assert dry["audience"] == 3 and fakes.written == []
        created = await gateway.create_broadcast(body())
        assert created["created"] is True and fakes.written[-1].kind == "create"
        with pytest.raises(HttpError) as caught:
            await gateway.create_broadcast(body(page_id="999"))
        assert (caught.value.status, caught.value.body["field"]) == (400, "page_id")
        book.apply_progress("b1:0", progress(0, "running", audience=5, decided=1))
        view = await gateway.broadcast("b1")
        assert view is not None and (view["status"], view["audience"]) == ("running", 5)
        assert await gateway.broadcast("nope") is None
        assert (await gateway.pause_broadcast("b1"))["command"] == "pause"
        assert (await gateway.resume_broadcast("b1"))["command"] == "resume"
        assert (await gateway.cancel_broadcast("b1"))["command"] == "cancel"
        assert [k.kind for k in fakes.written] == ["create", "pause", "resume", "cancel"]
        assert [b["broadcast_id"] for b in await gateway.list_broadcasts(PAGE)] == ["b1"]
        with pytest.raises(HttpError) as missing:
            await gateway.pause_broadcast("nope")
        assert missing.value.status == 404


# ---- the window's dry-run endpoint, as the front calls it ----------------------------------


async def test_the_dry_run_client_reads_the_windows_answers() -> None:
    answers: list[tuple[int, bytes]] = []
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        seen.append(await request.json())
        status, raw = answers.pop(0)
        return web.Response(status=status, body=raw, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/internal/broadcasts/dry-run", handler)
    async with TestServer(app) as server:
        dry_run = WindowDryRun(str(server.make_url("")), "tok", timeout_s=5)
        try:
            spec = parse(body())
            answers.append((200, b'{"audience": 2, "by_mechanism": {"OTN": 2}, "refused": {}}'))
            assert (await dry_run(spec))["audience"] == 2
            assert seen[0]["broadcast_id"] == "b1" and seen[0]["audience"]["topic"] == "restock"
            for status, raw, expected in [
                (404, b"404: Not Found", 503),  # a window without the endpoint (yet)
                (200, b'{"audience": "many"}', 503),
                (400, b'{"field": "audience.topic", "detail": "x"}', 400),
            ]:
                answers.append((status, raw))
                with pytest.raises(DryRunFailed) as failed:
                    await dry_run(spec)
                assert failed.value.status == expected, failed.value.body
            assert failed.value.body["field"] == "audience.topic"
        finally:
            await dry_run.close()
    nobody = WindowDryRun("http://127.0.0.1:1", None, timeout_s=5)
    try:
        with pytest.raises(DryRunFailed) as away:
            await nobody(parse(body()))
        assert away.value.status == 503
    finally:
        await nobody.close()


class FakeProducer:
    """The parts of a transactional producer the writer uses; `fail` breaks the next send."""

    def __init__(self, log: list[str], fail: bool) -> None:
        self.log = log
        self.fail = fail
        self.sent: list[tuple[int, bytes]] = []

    async def start(self) -> None:
        self.log.append("start")

    async def stop(self) -> None:
        self.log.append("stop")

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def transaction(self) -> Any:
        producer = self

        class Transaction:
            async def __aenter__(self) -> None:
                producer.log.append("begin")

            async def __aexit__(self, kind: Any, *_: Any) -> None:
                producer.log.append("abort" if kind else "commit")

        return Transaction()

    async def send(self, topic: str, value: bytes, *, key: bytes, partition: int) -> None:
        if self.fail:
            raise ConnectionError("the broker went away")
        self.sent.append((partition, key))


async def test_the_writer_writes_every_partition_and_replaces_a_broken_producer() -> None:
    log: list[str] = []
    made: list[FakeProducer] = []

    def make() -> Any:
        made.append(FakeProducer(log, fail=not made))  # the first one breaks
        return made[-1]

    writer = CommandWriter(make, "t.broadcast-commands")
    command = BroadcastCommand(kind="pause", broadcast_id="b1", page_id=PAGE, at=1)
    with pytest.raises(ConnectionError):
        await writer(command)
    assert await writer(command) == 3
    assert made[1].sent == [(0, b"b1"), (1, b"b1"), (2, b"b1")]
    assert log == ["start", "begin", "abort", "stop", "start", "begin", "commit"]
    await writer.close()


async def test_a_cancel_answers_once_every_partition_reports_it_finished(front: Any) -> None:
    """Slices in flight when the cancel is written can still decide recipients: the answer waits
    for every partition's finished progress, so nothing is decided after it and its counts are
    final; without that within wait_s it says which partitions have not confirmed."""
    client, fakes, book = front
    written = asyncio.Event()

    class Written(list[BroadcastCommand]):
        def append(self, command: BroadcastCommand) -> None:
            super().append(command)
            written.set()

    fakes.written = Written()
    await client.post("/v1/broadcasts", json=body(), headers=AUTH)
    for n in range(3):
        book.apply_progress(f"b1:{n}", progress(n, "running", audience=2, decided=1))
    written.clear()

    async def windows_read_the_cancel() -> None:
        await written.wait()  # the partitions answer once the command is written
        for n in range(3):
            book.apply_progress(f"b1:{n}", progress(n, "cancelled", audience=2, decided=2))
        book.apply_progress("b1:3", progress(3, "done", audience=1, decided=1))

    reader = asyncio.create_task(windows_read_the_cancel())
    answer = await client.delete("/v1/broadcasts/b1", headers=AUTH)
    await reader
    data = await answer.json()
    assert answer.status == 202
    assert (data["confirmed"], data["status"], data["decided"]) == (True, "cancelled", 7)

    await client.post("/v1/broadcasts", json=body(broadcast_id="b2"), headers=AUTH)
    book.apply_progress("b2:0", replace(progress(0, "running"), broadcast_id="b2"))
    answer = await client.delete("/v1/broadcasts/b2", headers=AUTH)
    data = await answer.json()
    assert answer.status == 202 and data["confirmed"] is False
    assert "partitions [0, 1, 2, 3]" in data["detail"]
