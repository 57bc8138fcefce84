"""End to end with the real window worker (`python -m services.window worker`, a subprocess):
events → window state; `POST /v1/messages` and the Graph proxy → the window decides (single
writer, I1) → the dispatcher delivers to the Graph stand-in → the outcome events fold back into
the window's state, which every query then shows (a spent token is spent everywhere)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import fbmessenger
import pytest_asyncio

from devtools.devbroker import unique_name
from devtools.graph_standin import GraphStandIn
from devtools.window_harness import WindowProcess
from schemas.events import MessageReceived, OtnOptin
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.dispatcher.service import DispatcherService
from tests.integration.dispatcher_kit import (
    API_TOKEN,
    HOUR,
    PAGE_EU,
    TOKENS,
    Collector,
    config,
    create_topics,
    publish_events,
    rules,
    window_worker,
    write_pages,
)

PARTITIONS = 2
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Stack:
    bootstrap: str
    topics: Topics
    window: WindowProcess
    url: str
    standin: GraphStandIn
    collector: Collector
    http: aiohttp.ClientSession

    async def post(self, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}/v1/messages", json=body, headers=AUTH) as r:
            return r.status, await r.json()

    async def user_state(self, user: str) -> Any:
        status, body, _ = await self.window.get(f"/v1/pages/{PAGE_EU}/users/{user}")
        assert status == 200, body
        return body


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(kafka_bootstrap: str, tmp_path_factory: Any) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("e2e")
    prefix = unique_name("e2e") + "."
    topics = await create_topics(kafka_bootstrap, prefix, PARTITIONS)
    pages = write_pages(tmp)
    window = window_worker(kafka_bootstrap, prefix, tmp, PARTITIONS, pages).start()
    standin = GraphStandIn(TOKENS)
    await standin.start()
    collector = Collector(kafka_bootstrap, topics)
    await collector.start()
    service = DispatcherService(
        config(kafka_bootstrap, prefix, standin.base_url, partitions=PARTITIONS),
        rules(),
        host="127.0.0.1",
        page_tokens=TOKENS,
    )
    http = aiohttp.ClientSession()
    try:
        await window.wait_ready()
        await service.start()
        yield Stack(
            kafka_bootstrap,
            topics,
            window,
            f"http://127.0.0.1:{service.port}",
            standin,
            collector,
            http,
        )
    finally:
        await http.close()
        await service.stop()
        await collector.stop()
        await standin.stop()
        await window.terminate()


async def test_message_in_the_window_is_decided_by_the_window_and_delivered(stack: Stack) -> None:
    user = unique_name("u")
    await publish_events(
        stack.bootstrap,
        stack.topics.events,
        [MessageReceived(page_id=PAGE_EU, user_id=user, timestamp=now_ms() - HOUR, mid="m1")],
    )
    await until_state(stack, user, lambda s: s["state"].get("last_opener_at") is not None)
    body = {
        "request_id": unique_name("r"),
        "page_id": PAGE_EU,
        "user_id": user,
        "message": {"text": "e2e hello"},
    }
    status, answer = await stack.post(body)
    assert status == 200, answer
    assert (answer["allowed"], answer["reason"]) == (True, "window_open")
    assert answer["delivery"]["status"] == "sent"
    again_status, again = await stack.post(body)
    assert again_status == 200 and again["duplicate"] is True
    assert len(stack.standin.calls_for("e2e hello")) == 1


async def test_otn_token_is_spent_once_across_window_and_dispatcher(stack: Stack) -> None:
    user, token = unique_name("u"), unique_name("otn")
    await publish_events(
        stack.bootstrap,
        stack.topics.events,
        [
            OtnOptin(
                page_id=PAGE_EU,
                user_id=user,
                timestamp=now_ms() - HOUR,
                token=token,
                topic="restock",
            )
        ],
    )
    await until_state(stack, user, lambda s: bool(s["state"].get("otn")))
    first = {
        "request_id": unique_name("r"),
        "page_id": PAGE_EU,
        "user_id": user,
        "purpose": "otn",
        "topic": "restock",
        "message": {"text": f"back in stock {token}"},
    }
    status, answer = await stack.post(first)
    assert status == 200 and answer["allowed"] and answer["token"] == token, answer
    assert answer["delivery"]["status"] == "sent"
    second = {**first, "request_id": unique_name("r")}
    _, refused = await stack.post(second)
    assert (refused["allowed"], refused["reason"]) == (False, "token_spent")
    await until_state(
        stack,
        user,
        lambda s: [t.get("status") for t in s["state"].get("otn", [])] == ["spent"],
    )
    assert stack.standin.token_uses()[token] == 1

    bot = fbmessenger.MessengerClient(TOKENS[PAGE_EU], api_version="25.0")
    bot.graph_url = f"{stack.url}/v25.0"
    proxied = await asyncio.to_thread(bot.send, {"text": "via proxy"}, user, "RESPONSE")
    assert proxied["windowgate"]["reason"] == "window_closed"  # the opt-in never opened it
    assert stack.standin.calls_for("via proxy") == []


async def until_state(stack: Stack, user: str, check: Any) -> None:
    latest: dict[str, Any] = {}

    async def probe() -> bool:
        status, body, _ = await stack.window.get(f"/v1/pages/{PAGE_EU}/users/{user}")
        latest["body"] = body
        return status == 200 and isinstance(body, dict) and bool(check(body))

    for _ in range(600):
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"window state of {user} never matched: {latest.get('body')}")


async def test_proxy_sender_actions_and_fields_through_the_real_window(stack: Stack) -> None:
    """The window decides a typing indicator (the window is open) without remembering it; a
    silent message keeps its notification_type through send-requests and decisions."""
    user = unique_name("u")
    await publish_events(
        stack.bootstrap,
        stack.topics.events,
        [MessageReceived(page_id=PAGE_EU, user_id=user, timestamp=now_ms() - HOUR, mid="m-sa")],
    )
    await until_state(stack, user, lambda s: s["state"].get("last_opener_at") is not None)
    bot = fbmessenger.MessengerClient(TOKENS[PAGE_EU], api_version="25.0")
    bot.graph_url = f"{stack.url}/v25.0"
    typing = await asyncio.to_thread(bot.send_action, "typing_on", user)
    assert typing == {"recipient_id": user}, typing
    sent = await asyncio.to_thread(bot.send, {"text": f"quiet {user}"}, user, "RESPONSE", "NO_PUSH")
    assert sent["message_id"], sent
    [call] = stack.standin.calls_for(f"quiet {user}")
    assert call.body["notification_type"] == "NO_PUSH"
    assert [
        c.body.get("sender_action") for c in stack.standin.calls if c.recipient == {"id": user}
    ] == [
        "typing_on",
        None,
    ]
    state = await stack.user_state(user)
    assert len(state["state"].get("decisions", [])) == 1  # the message only
