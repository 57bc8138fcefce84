"""The broadcast API through a real broker: the dispatcher's front (API role) writes the commands
to every partition of broadcast-commands, and sums BroadcastProgress records written here by hand
in place of the window partitions (the window's fan-out is tested with the window). The dry run
goes to a stand-in for the window's endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devtools.devbroker import unique_name
from schemas.broadcast import (
    BroadcastCommand,
    BroadcastProgress,
    decode_command,
    encode_progress,
    spec_from_wire,
)
from schemas.topics import Topics
from services.dispatcher.service import DispatcherService
from tests.integration.dispatcher_kit import (
    API_TOKEN,
    DEADLINE_S,
    PAGE_EU,
    config,
    create_topics,
    rules,
)
from windowgate.cli import main

PARTITIONS = 3
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Front:
    bootstrap: str
    topics: Topics
    url: str
    http: aiohttp.ClientSession
    dry_runs: list[dict[str, Any]]

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.url}{path}", headers=AUTH, **kw) as answer:
            return answer.status, await answer.json(content_type=None)

    async def commands(self, broadcast_id: str, count: int) -> dict[int, list[BroadcastCommand]]:
        """The commands of `broadcast_id` on each partition, once `count` are there in all."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        found: dict[int, list[BroadcastCommand]] = {}
        try:
            partitions = [
                TopicPartition(self.topics.broadcast_commands, p) for p in range(PARTITIONS)
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)

            async def read() -> bool:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    for record in records:
                        command = decode_command(record.value or b"")
                        if command.broadcast_id == broadcast_id:
                            assert record.key == broadcast_id.encode()
                            found.setdefault(tp.partition, []).append(command)
                return sum(len(c) for c in found.values()) >= count

            await until_async(read, f"{count} commands of {broadcast_id}")
        finally:
            await consumer.stop()
        return found

    async def progress(self, *records: BroadcastProgress) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for p in records:
                key = f"{p.broadcast_id}:{p.partition}".encode()
                await producer.send(self.topics.broadcasts, encode_progress(p), key=key)
            await producer.flush()
        finally:
            await producer.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def front(kafka_bootstrap: str) -> AsyncIterator[Front]:
    dry_runs: list[dict[str, Any]] = []

    async def dry_run(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {API_TOKEN}"
        spec = spec_from_wire(await request.json())  # the spec's own wire body
        dry_runs.append({"broadcast_id": spec.broadcast_id, "topic": spec.audience.topic})
        return web.json_response(
            {"audience": 7, "by_mechanism": {"OTN": 5}, "refused": {"token_expired": 2}}
        )

    window_app = web.Application()
    window_app.router.add_post("/v1/internal/broadcasts/dry-run", dry_run)
    window = TestServer(window_app)
    await window.start_server()
    prefix = unique_name("bapi") + "."
    topics = await create_topics(kafka_bootstrap, prefix, PARTITIONS)
    cfg = config(
        kafka_bootstrap,
        prefix,
        "http://127.0.0.1:1",
        partitions=PARTITIONS,
        role="api",
        window_url=str(window.make_url("")).rstrip("/"),
    )
    service = DispatcherService(cfg, rules(), host="127.0.0.1")
    await service.start()
    http = aiohttp.ClientSession()
    try:
        yield Front(kafka_bootstrap, topics, f"http://127.0.0.1:{service.port}", http, dry_runs)
    finally:
        await http.close()
        await service.stop()
        await window.close()


def spec(broadcast_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "broadcast_id": broadcast_id,
        "page_id": PAGE_EU,
        "purpose": "otn",
        "message": {"text": f"Back in stock ({broadcast_id})"},
        "audience": {"topic": "restock", "labels_none": ["staff"]},
        **kw,
    }


def progress(broadcast_id: str, partition: int, status: Any, **kw: Any) -> BroadcastProgress:
    return BroadcastProgress(
        broadcast_id=broadcast_id, page_id=PAGE_EU, partition=partition, status=status, **kw
    )


async def test_create_lands_in_every_partition_and_get_sums_the_progress(front: Front) -> None:
    bid = unique_name("b")
    status, answer = await front.call("POST", "/v1/broadcasts", json=spec(bid))
    assert status == 202, answer
    assert answer["status_url"] == f"/v1/broadcasts/{bid}"
    commands = await front.commands(bid, PARTITIONS)
    assert sorted(commands) == list(range(PARTITIONS))
    for partition_commands in commands.values():
        [command] = partition_commands
        assert command.kind == "create" and command.spec is not None
        assert command.spec.audience.topic == "restock" and command.spec.created_at

    status, again = await front.call("POST", "/v1/broadcasts", json=spec(bid))
    assert (status, again["created"]) == (200, False)
    status, other = await front.call(
        "POST", "/v1/broadcasts", json=spec(bid, message={"text": "else"})
    )
    assert (status, other["field"]) == (409, "message")

    await front.progress(
        progress(bid, 0, "running", audience=10, decided=4, by_mechanism={"OTN": 4}, sent=3),
        progress(bid, 1, "done", audience=5, decided=5, by_mechanism={"OTN": 4}, sent=4,
                 refused={"token_expired": 1}, finished_at=2),
        progress(bid, 2, "done", audience=0),
    )  # fmt: skip

    async def summed() -> dict[str, Any]:
        _, view = await front.call("GET", f"/v1/broadcasts/{bid}")
        return dict(view)

    view: dict[str, Any] = {}

    async def poll() -> bool:
        nonlocal view
        view = await summed()
        return bool(view["partitions"]["reported"] == PARTITIONS)

    await until_async(poll, "the three partitions' progress")
    assert (view["status"], view["audience"], view["decided"], view["sent"]) == (
        "running",
        15,
        9,
        7,
    )
    assert view["by_mechanism"] == {"OTN": 8} and view["refused"] == {"token_expired": 1}

    await front.progress(progress(bid, 0, "done", audience=10, decided=10, sent=10, finished_at=3))

    async def done() -> bool:
        nonlocal view
        view = await summed()
        return bool(view["status"] == "done")

    await until_async(done, "the broadcast done")
    assert (view["decided"], view["sent"], view["finished_at"]) == (15, 14, 3)
    _, listed = await front.call("GET", f"/v1/broadcasts?page_id={PAGE_EU}")
    assert bid in [b["broadcast_id"] for b in listed["broadcasts"]]


async def test_pause_resume_cancel_write_their_commands_everywhere(front: Front) -> None:
    bid = unique_name("b")
    assert (await front.call("POST", "/v1/broadcasts", json=spec(bid)))[0] == 202
    for method, path in [
        ("POST", f"/v1/broadcasts/{bid}/pause"),
        ("POST", f"/v1/broadcasts/{bid}/resume"),
    ]:
        status, answer = await front.call(method, path)
        assert (status, answer["partitions"]) == (202, PARTITIONS), answer
    # A cancel answers once every partition reports the broadcast finished: play the window.
    cancel = asyncio.create_task(front.call("DELETE", f"/v1/broadcasts/{bid}"))
    commands = await front.commands(bid, 4 * PARTITIONS)
    for partition in range(PARTITIONS):
        kinds = [c.kind for c in commands[partition]]
        assert kinds == ["create", "pause", "resume", "cancel"]
    assert not cancel.done()  # no partition has confirmed yet
    await front.progress(*(progress(bid, n, "cancelled") for n in range(PARTITIONS)))
    status, answer = await cancel
    assert (status, answer["partitions"], answer["confirmed"]) == (202, PARTITIONS, True), answer
    _, view = await front.call("GET", f"/v1/broadcasts/{bid}")
    assert view["status"] == "cancelled"
    assert (await front.call("GET", "/v1/broadcasts/never-created"))[0] == 404


async def test_a_dry_run_asks_the_window_and_writes_nothing(front: Front) -> None:
    bid = unique_name("dry")
    status, answer = await front.call("POST", "/v1/broadcasts", json=spec(bid, dry_run=True))
    assert status == 200, answer
    assert (answer["audience"], answer["by_mechanism"], answer["refused"]) == (
        7,
        {"OTN": 5},
        {"token_expired": 2},
    )
    assert {"broadcast_id": bid, "topic": "restock"} in front.dry_runs
    assert (await front.call("GET", f"/v1/broadcasts/{bid}"))[0] == 404


async def until_async(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """`until` for a check that must await (an HTTP call, a fetch)."""
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE_S:.0f} s")
        await asyncio.sleep(0.05)


async def test_a_restarted_front_knows_the_broadcasts_from_the_topics(front: Front) -> None:
    """The front keeps nothing on disk: a new process reads both topics from the beginning."""
    bid = unique_name("b")
    assert (await front.call("POST", "/v1/broadcasts", json=spec(bid)))[0] == 202
    await front.progress(progress(bid, 1, "running", audience=3, decided=1))
    cfg = config(
        front.bootstrap, front.topics.prefix, "http://127.0.0.1:1", partitions=PARTITIONS,
        role="api",
    )  # fmt: skip
    async with DispatcherService(cfg, rules(), host="127.0.0.1") as second:
        url = f"http://127.0.0.1:{second.port}"
        view: dict[str, Any] = {}

        async def seen() -> bool:
            nonlocal view
            async with front.http.get(f"{url}/v1/broadcasts/{bid}", headers=AUTH) as answer:
                view = await answer.json(content_type=None)
                return answer.status == 200 and view["partitions"]["reported"] == 1

        await until_async(seen, "the broadcast in a new front")
        assert (view["status"], view["audience"], view["decided"]) == ("running", 3, 1)
        again = {**spec(bid)}
        async with front.http.post(f"{url}/v1/broadcasts", json=again, headers=AUTH) as answer:
            assert answer.status == 200  # the same spec again: nothing new
        async with front.http.post(
            f"{url}/v1/broadcasts", json=spec(bid, purpose="auto"), headers=AUTH
        ) as answer:
            assert answer.status == 409


async def test_the_cli_through_the_real_front(
    front: Front, capsys: pytest.CaptureFixture[str]
) -> None:
    """`windowgate broadcast` as an operator types it (in a thread: it runs its own loop)."""
    bid = unique_name("cli")
    base = ["--url", front.url, "--token", API_TOKEN]
    create = ["broadcast", "create", "--id", bid, "--page", PAGE_EU, "--text", "Back in stock"]
    create += ["--purpose", "otn", "--topic", "restock", *base]
    assert await asyncio.to_thread(main, create) == 0
    assert f"broadcast {bid} created" in capsys.readouterr().out
    commands = await front.commands(bid, PARTITIONS)
    assert all(c[0].kind == "create" for c in commands.values())
    await front.progress(*(progress(bid, n, "done", audience=1, decided=1) for n in range(3)))

    async def finished() -> bool:
        code = await asyncio.to_thread(main, ["broadcast", "status", bid, "--json", *base])
        return code == 0 and orjson.loads(capsys.readouterr().out)["status"] == "done"

    await until_async(finished, "the broadcast done through the CLI")
    follow = ["broadcast", "status", bid, "--follow", "--every", "0.1", *base]
    assert await asyncio.to_thread(main, follow) == 0
    assert "[" + "#" * 30 + "] 100%  3/3 decided" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["broadcast", "cancel", bid, *base]) == 0
    said = capsys.readouterr().out
    assert f"cancel of {bid} written to {PARTITIONS} partitions; confirmed: done, 3 decided" in said
    bad = ["broadcast", "create", "--page", "999", "--text", "x", "--topic", "t", *base]
    assert await asyncio.to_thread(main, bad) == 2
    assert "windowgate: page_id: unknown page '999'" in capsys.readouterr().err
