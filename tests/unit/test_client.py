"""windowgate.client without a broker: the watcher's bookkeeping and the HTTP gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from schemas.decision import Decision, DecisionRecord, decision_to_wire
from schemas.topics import Topics
from windowgate.client import DecisionWatcher, GatewayError, HttpGateway, new_request

PAGE, USER = "682498171943165", "1254459154682919"


def decision(request_id: str, allowed: bool = True) -> Decision:
    return Decision(
        request_id=request_id,
        page_id=PAGE,
        user_id=USER,
        decided_at=1,
        allowed=allowed,
        reason="window_open" if allowed else "window_closed",
        detail="d",
        rules_version="v",
        mechanism="RESPONSE" if allowed else None,
    )


def test_new_request_fills_id_and_time() -> None:
    a, b = new_request(PAGE, USER, message={"text": "x"}), new_request(PAGE, USER)
    assert a.request_id != b.request_id and a.created_at and a.key == f"{PAGE}:{USER}"
    assert new_request(PAGE, USER, request_id="mine").request_id == "mine"


async def test_watcher_resolves_waiters_and_remembers() -> None:
    watcher = DecisionWatcher("unused:9092", Topics(), recent=2)
    waiting = watcher.expect("r1")
    other = watcher.expect("r1")
    watcher.remember(DecisionRecord(decision("r1"), {"text": "x"}))
    assert (await waiting).decision.request_id == "r1"
    assert (await other).message == {"text": "x"}
    assert watcher.recent("r1") is not None


async def test_watcher_cache_is_bounded_and_lru() -> None:
    watcher = DecisionWatcher("unused:9092", Topics(), recent=2)
    for rid in ("a", "b", "a", "c"):
        watcher.remember(DecisionRecord(decision(rid)))
    assert watcher.recent("b") is None
    assert watcher.recent("a") is not None and watcher.recent("c") is not None


async def test_cancelled_waiters_are_forgotten() -> None:
    watcher = DecisionWatcher("unused:9092", Topics())
    future = watcher.expect("r1")
    future.cancel()
    await asyncio.sleep(0)
    assert watcher._waiters == {}
    watcher.remember(DecisionRecord(decision("r1")))  # nobody waits: no error


class FakeApi:
    """Just enough of the dispatcher's /v1 to exercise the client."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.decided: dict[str, dict[str, Any]] = {}
        self.polls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.post)
        app.router.add_get("/v1/decisions/{rid}", self.get)
        return app

    async def post(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer secret":
            return web.json_response({"detail": "send Authorization"}, status=401)
        body = await request.json()
        rid = body["request_id"]
        if rid in self.pending:
            return web.json_response({"request_id": rid, "status": "pending"}, status=202)
        wire = decision_to_wire(decision(rid))
        wire["delivery"] = {"status": "sent", "message_id": "m_1"}
        self.decided[rid] = wire
        return web.json_response(wire)

    async def get(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        self.polls += 1
        if self.polls >= 2:
            self.decided[rid] = decision_to_wire(decision(rid, allowed=False))
        if rid not in self.decided:
            return web.json_response({"detail": "not found"}, status=404)
        return web.json_response(self.decided[rid])


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    server = TestServer(fake.app())
    await server.start_server()
    yield fake, str(server.make_url(""))
    await server.close()


async def test_http_send(api: tuple[FakeApi, str]) -> None:
    _, url = api
    async with HttpGateway(url, "secret") as gateway:
        reply = await gateway.send(new_request(PAGE, USER, request_id="r1"))
    assert reply.decision is not None and reply.decision.allowed
    assert reply.delivery == {"status": "sent", "message_id": "m_1"} and not reply.pending


async def test_http_pending_then_polled(api: tuple[FakeApi, str]) -> None:
    fake, url = api
    fake.pending.add("r2")
    async with HttpGateway(url, "secret") as gateway:
        reply = await gateway.send_and_wait(
            new_request(PAGE, USER, request_id="r2"), timeout_s=5, poll_s=0.01
        )
        assert reply.decision is not None and reply.decision.reason == "window_closed"
        assert await gateway.decision("r2") is not None


async def test_http_errors_are_gateway_errors(api: tuple[FakeApi, str]) -> None:
    _, url = api
    async with HttpGateway(url, "wrong") as gateway:
        with pytest.raises(GatewayError, match="401"):
            await gateway.send(new_request(PAGE, USER))
    async with HttpGateway("http://127.0.0.1:1", "secret") as gateway:
        with pytest.raises(GatewayError, match="cannot reach"):
            await gateway.send(new_request(PAGE, USER))
