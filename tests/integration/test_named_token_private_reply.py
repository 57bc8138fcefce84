"""Issue 14 points 3 and 5 through the real stack: a real broker, ingest (in process, signed
webhooks), the window worker (a subprocess), the dispatcher with its Graph proxy, and the Graph
stand-in that records every call.

- The proxy case of point 3: tokens A (older) and B on one topic; a send naming B goes out with
  B, a later send naming A with A, and B named again is refused in Meta's shape.
- Point 5: a comment webhook into ingest; a private reply through the proxy is forwarded once with
  `recipient.comment_id`, a second is refused in Meta's shape; a visitor post's reply through
  `POST /v1/messages`; a checkbox-plugin opt-in then a send by `recipient.user_ref`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from devtools.devbroker import unique_name
from devtools.graph_standin import Call, GraphStandIn
from devtools.window_harness import WindowProcess
from schemas.events import OtnOptin
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.dispatcher.front.feeds import TokenIndex
from services.dispatcher.service import DispatcherService
from services.ingest.app import create_app
from services.ingest.publisher import KafkaPublisher
from tests.integration.dispatcher_kit import (
    API_TOKEN,
    DEADLINE_S,
    HOUR,
    PAGE_EU,
    TOKENS,
    config,
    create_topics,
    publish_events,
    rules,
    until,
    window_worker,
    write_pages,
)
from tests.unit.test_ingest_app import CONFIG as INGEST_CONFIG
from tests.unit.test_ingest_app import signed

PARTITIONS = 2
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PROXY = f"/v25.0/me/messages?access_token={TOKENS[PAGE_EU]}"
FEED = Path(__file__).resolve().parents[1] / "unit" / "meta" / "feed"


@dataclass
class Stack:
    bootstrap: str
    topics: Topics
    window: WindowProcess
    url: str
    standin: GraphStandIn
    ingest: TestClient[Any, Any]
    index: TokenIndex
    http: aiohttp.ClientSession

    async def webhook(self, body: dict[str, Any]) -> None:
        raw = orjson.dumps(body)
        async with self.ingest.post("/webhook", data=raw, headers=signed(raw)) as response:
            assert response.status == 200, await response.text()

    async def proxy(self, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}{PROXY}", json=body) as response:
            return response.status, await response.json()

    async def post(self, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}/v1/messages", json=body, headers=AUTH) as r:
            return r.status, await r.json()

    async def until_state(self, user: str, check: Callable[[dict[str, Any]], bool]) -> None:
        async def matches() -> bool:
            status, body, _ = await self.window.get(f"/v1/pages/{PAGE_EU}/users/{user}")
            return status == 200 and isinstance(body, dict) and check(body["state"])

        for _ in range(int(DEADLINE_S / 0.05)):
            if await matches():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the window's state of {user} never matched")

    async def until_indexed(self, key: str) -> None:
        await until(lambda: self.index.lookup(key) is not None, f"the proxy index has {key}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(kafka_bootstrap: str, tmp_path_factory: Any) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("otn")
    prefix = unique_name("otn") + "."
    topics = await create_topics(kafka_bootstrap, prefix, PARTITIONS)
    window = window_worker(kafka_bootstrap, prefix, tmp, PARTITIONS, write_pages(tmp)).start()
    standin = GraphStandIn(TOKENS)
    await standin.start()
    service = DispatcherService(
        config(kafka_bootstrap, prefix, standin.base_url, partitions=PARTITIONS),
        rules(),
        host="127.0.0.1",
        page_tokens=TOKENS,
    )
    publisher = KafkaPublisher(kafka_bootstrap, topics, PARTITIONS)
    ingest_config = replace(INGEST_CONFIG, publish_timeout_s=DEADLINE_S)
    ingest = TestClient(TestServer(create_app(ingest_config, publisher, topics)))
    http = aiohttp.ClientSession()
    try:
        await window.wait_ready()
        await service.start()
        await ingest.start_server()
        index = service.api.tokens
        assert index is not None
        yield Stack(
            kafka_bootstrap,
            topics,
            window,
            f"http://127.0.0.1:{service.port}",
            standin,
            ingest,
            index,
            http,
        )
    finally:
        await http.close()
        await ingest.close()
        await service.stop()
        await standin.stop()
        await window.terminate()


def meta_id() -> str:
    """A fresh id of Meta's shape (digits only), so every test has its own user and comment."""
    return str(random.randrange(10**15, 10**16))


def only_call(stack: Stack, text: str) -> Call:
    calls = stack.standin.calls_for(text)
    assert len(calls) == 1, [c.body for c in calls]
    return calls[0]


async def test_the_token_named_in_metas_body_is_the_one_spent(stack: Stack) -> None:
    user, a, b = meta_id(), unique_name("otn-A"), unique_name("otn-B")
    opt_ins = [
        OtnOptin(page_id=PAGE_EU, user_id=user, timestamp=now_ms() - 2 * HOUR, token=a, topic="t"),
        OtnOptin(page_id=PAGE_EU, user_id=user, timestamp=now_ms() - HOUR, token=b, topic="t"),
    ]
    await publish_events(stack.bootstrap, stack.topics.events, opt_ins)
    await stack.until_state(user, lambda s: len(s.get("otn", [])) == 2)
    await stack.until_indexed(b)

    status, sent_b = await stack.proxy(
        {"recipient": {"one_time_notif_token": b}, "message": {"text": f"named B {b}"}}
    )
    assert status == 200 and "message_id" in sent_b, sent_b
    assert only_call(stack, f"named B {b}").recipient == {"one_time_notif_token": b}

    status, sent_a = await stack.proxy(
        {"recipient": {"one_time_notif_token": a}, "message": {"text": f"named A {a}"}}
    )
    assert status == 200 and "message_id" in sent_a, sent_a
    assert only_call(stack, f"named A {a}").recipient == {"one_time_notif_token": a}

    status, refused = await stack.proxy(
        {"recipient": {"one_time_notif_token": b}, "message": {"text": f"B again {b}"}}
    )
    assert status == 400
    assert refused["error"]["code"] == 100 and refused["error"]["type"] == "OAuthException"
    assert refused["windowgate"]["reason"] == "token_spent"
    assert stack.standin.calls_for(f"B again {b}") == []
    assert (stack.standin.token_uses()[a], stack.standin.token_uses()[b]) == (1, 1)


def feed_comment(user: str, comment_id: str, created_s: int) -> dict[str, Any]:
    """The documented Pages `feed` comment body (tests/unit/meta/feed), for this user and id."""
    body: dict[str, Any] = orjson.loads((FEED / "feed-comment.json").read_bytes())
    entry = body["entry"][0]
    entry["time"] = created_s
    value = entry["changes"][0]["value"]
    value["from"]["id"] = user
    value["comment_id"] = comment_id
    value["created_time"] = created_s
    return body


async def test_a_comment_webhook_allows_one_private_reply_through_the_proxy(stack: Stack) -> None:
    user, comment_id = meta_id(), f"{meta_id()}_{meta_id()}"
    await stack.webhook(feed_comment(user, comment_id, now_ms() // 1000 - 3600))
    await stack.until_state(user, lambda s: len(s.get("comments", [])) == 1)
    await stack.until_indexed(comment_id)

    reply = {"recipient": {"comment_id": comment_id}, "message": {"text": f"thanks {comment_id}"}}
    status, sent = await stack.proxy(reply)
    assert status == 200 and "message_id" in sent, sent
    call = only_call(stack, f"thanks {comment_id}")
    assert call.recipient == {"comment_id": comment_id}
    assert call.path.endswith(f"/{PAGE_EU}/messages")

    status, refused = await stack.proxy(
        {"recipient": {"comment_id": comment_id}, "message": {"text": f"again {comment_id}"}}
    )
    assert status == 400, refused
    assert (refused["error"]["code"], refused["error"]["type"]) == (10, "OAuthException")
    assert refused["windowgate"]["reason"] == "private_reply_used"
    assert stack.standin.calls_for(f"again {comment_id}") == []
    await stack.until_state(user, lambda s: s["comments"][0].get("status") == "spent")
    assert len(stack.standin.calls_for(comment_id)) == 1


async def test_a_visitor_posts_private_reply_through_the_api(stack: Stack) -> None:
    user, post_id = meta_id(), f"{PAGE_EU}_{meta_id()}"
    body: dict[str, Any] = orjson.loads((FEED / "feed-visitor-post.json").read_bytes())
    value = body["entry"][0]["changes"][0]["value"]
    value.update({"post_id": post_id, "created_time": now_ms() // 1000 - 60})
    value["from"]["id"] = user
    await stack.webhook(body)
    await stack.until_state(user, lambda s: len(s.get("comments", [])) == 1)
    ask = {
        "request_id": unique_name("pr"),
        "page_id": PAGE_EU,
        "user_id": user,
        "private_reply_to": post_id,
        "message": {"text": f"hello visitor {post_id}"},
    }
    status, decision = await stack.post(ask)
    assert status == 200, decision
    assert (decision["mechanism"], decision["recipient"]) == ("PRIVATE_REPLY", "post_id")
    assert decision["delivery"]["status"] == "sent"
    assert only_call(stack, f"hello visitor {post_id}").recipient == {"post_id": post_id}
    _, second = await stack.post({**ask, "request_id": unique_name("pr")})
    assert (second["allowed"], second["reason"]) == (False, "private_reply_used")


async def test_a_checkbox_opt_in_allows_a_send_by_user_ref(stack: Stack) -> None:
    user_ref = unique_name("ref")
    optin = {
        "recipient": {"id": PAGE_EU},
        "timestamp": now_ms() - 60_000,
        "optin": {"ref": "checkout", "user_ref": user_ref},
    }
    await stack.webhook(
        {"object": "page", "entry": [{"id": PAGE_EU, "time": 0, "messaging": [optin]}]}
    )
    await stack.until_state(user_ref, lambda s: s.get("last_opener_at") is not None)
    status, sent = await stack.proxy(
        {
            "recipient": {"user_ref": user_ref},
            "messaging_type": "RESPONSE",
            "message": {"text": f"order confirmed {user_ref}"},
        }
    )
    assert status == 200 and "message_id" in sent, sent
    call = only_call(stack, f"order confirmed {user_ref}")
    assert call.recipient == {"user_ref": user_ref}
    assert call.body["messaging_type"] == "RESPONSE"
