"""The drop-in Graph proxy answers like Graph (issue 14), through a real broker: the dispatcher
service (front and delivery), the window played by `FakeWindow` (the offline gateway), and the
Graph stand-in recording what Graph receives. Requests are shaped as Meta documents them, or sent
by fbmessenger 6.0.0 (unmodified, from PyPI) with its `graph_url` pointed at the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import fbmessenger
import orjson
import pytest_asyncio
import requests
from fbmessenger.attachments import Image
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from devtools.devbroker import unique_name
from devtools.graph_standin import GraphStandIn
from schemas.events import Event, MessageReceived
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.dispatcher.front.proxy_http import UPLOAD_LIMIT
from services.dispatcher.service import DispatcherService
from tests.integration.dispatcher_kit import (
    DEADLINE_S,
    HOUR,
    PAGE_EU,
    PAGE_US,
    PAGES_JSON,
    TOKENS,
    FakeWindow,
    config,
    create_topics,
    publish_events,
    until,
)
from windowgate.core.pages import parse_pages
from windowgate.core.rulebook import RuleBook, load_rules

PERSONA = "persona-ana"
PROOF_PAGES = {
    "pages": {
        **PAGES_JSON["pages"],
        PAGE_EU: {
            **PAGES_JSON["pages"][PAGE_EU],
            "human_agent_proof": "persona",
            "personas": {PERSONA: "ana@example.com"},
        },
    }
}
BOOK: RuleBook = load_rules(None, parse_pages(PROOF_PAGES))
TOKEN = TOKENS[PAGE_EU]
SLOW_S = 4.0
"""How long the stand-in takes to answer a 'slow' send: twice the slow front's outcome bound."""


@dataclass
class Proxy:
    bootstrap: str
    topics: Topics
    url: str
    slow_url: str
    """A second front (role api) that waits only 2 s for an outcome; the same delivery behind."""
    standin: GraphStandIn
    window: FakeWindow
    http: aiohttp.ClientSession

    async def know(self, *events: Event) -> None:
        self.window.know(events)
        await publish_events(self.bootstrap, self.topics.events, events)

    async def user(self, ago_ms: int = HOUR) -> str:
        """A user whose last message was `ago_ms` ago (an hour: inside the window)."""
        user = unique_name("u")
        at = now_ms() - ago_ms
        await self.know(MessageReceived(page_id=PAGE_EU, user_id=user, timestamp=at, mid=user))
        return user

    def bot(self, session: requests.Session | None = None) -> fbmessenger.MessengerClient:
        kw: dict[str, Any] = {"api_version": "25.0"}
        if session is not None:
            kw["session"] = session
        bot = fbmessenger.MessengerClient(TOKEN, **kw)
        bot.graph_url = f"{self.url}/v25.0"  # configuration, not a change: the library as shipped
        return bot

    async def post(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}{path}", **kw) as response:
            return response.status, orjson.loads(await response.read())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def proxy(kafka_bootstrap: str) -> AsyncIterator[Proxy]:
    async with contextlib.AsyncExitStack() as stack:
        standin = GraphStandIn(TOKENS)
        await standin.start()
        stack.push_async_callback(standin.stop)
        prefix = unique_name("proxy") + "."
        topics = await create_topics(kafka_bootstrap, prefix, 2)
        window = FakeWindow(kafka_bootstrap, topics, BOOK)
        await window.start()
        stack.push_async_callback(window.stop)
        service = DispatcherService(
            config(kafka_bootstrap, prefix, standin.base_url),
            BOOK,
            host="127.0.0.1",
            page_tokens=TOKENS,
        )
        await service.start()
        stack.push_async_callback(service.stop)
        slow_cfg = config(kafka_bootstrap, prefix, standin.base_url, outcome_wait_s=0.4, role="api")
        slow = DispatcherService(slow_cfg, BOOK, host="127.0.0.1", page_tokens=TOKENS)
        await slow.start()
        stack.push_async_callback(slow.stop)
        http = aiohttp.ClientSession()
        stack.push_async_callback(http.close)
        yield Proxy(
            kafka_bootstrap,
            topics,
            f"http://127.0.0.1:{service.port}",
            f"http://127.0.0.1:{slow.port}",
            standin,
            window,
            http,
        )


# ---- 1. sender actions ---------------------------------------------------------------------------


async def test_typing_indicators_and_read_receipts_inside_the_window(proxy: Proxy) -> None:
    user = await proxy.user()
    bot = proxy.bot()
    for action in ("typing_on", "typing_off", "mark_seen"):
        answer = await asyncio.to_thread(bot.send_action, action, user)
        assert answer == {"recipient_id": user}, answer  # Meta's own answer: no message_id
    sent = [c.body for c in proxy.standin.calls_to(user)]
    assert sent == [
        {"recipient": {"id": user}, "sender_action": a}
        for a in ("typing_on", "typing_off", "mark_seen")
    ]


async def test_a_sender_action_outside_the_window_is_metas_refusal(proxy: Proxy) -> None:
    user = await proxy.user(ago_ms=48 * HOUR)
    answer = await asyncio.to_thread(proxy.bot().send_action, "typing_on", user)
    assert (answer["error"]["code"], answer["error"]["error_subcode"]) == (10, 2018278)
    assert answer["windowgate"]["reason"] == "window_closed"
    assert proxy.standin.calls_to(user) == []


async def test_a_reaction_goes_out_with_its_payload(proxy: Proxy) -> None:
    user = await proxy.user()
    body = {
        "recipient": {"id": user},
        "sender_action": "react",
        "payload": {"message_id": "m_abc", "reaction": "love"},
    }
    status, answer = await proxy.post(f"/v25.0/{PAGE_EU}/messages?access_token={TOKEN}", json=body)
    assert (status, answer) == (200, {"recipient_id": user})
    [call] = proxy.standin.calls_to(user)
    assert call.body == body


# ---- 2. fields passed through, uploads -----------------------------------------------------------


async def test_a_silent_message_stays_silent(proxy: Proxy) -> None:
    user = await proxy.user()
    answer = await asyncio.to_thread(
        proxy.bot().send, {"text": f"shh {user}"}, user, "RESPONSE", "SILENT_PUSH"
    )
    assert answer["message_id"], answer
    [call] = proxy.standin.calls_for(f"shh {user}")
    assert call.body["notification_type"] == "SILENT_PUSH"


async def test_every_field_windowgate_does_not_set_reaches_graph_unchanged(proxy: Proxy) -> None:
    user = await proxy.user()
    extra = {
        "notification_type": "NO_PUSH",
        "persona_id": "p-1",
        "reply_to": {"mid": "m_earlier"},
        "metadata": "crm:7",
        "a_field_meta_adds_next_year": {"x": [1, 2]},
    }
    body = {
        "recipient": {"id": user},
        "messaging_type": "UPDATE",
        "message": {"text": f"fields {user}"},
        **extra,
    }
    status, _ = await proxy.post(f"/v25.0/me/messages?access_token={TOKEN}", json=body)
    assert status == 200
    [call] = proxy.standin.calls_for(f"fields {user}")
    assert call.body == body  # the caller's body, byte for byte in meaning


async def test_a_multipart_upload_goes_to_graphs_attachment_api(proxy: Proxy) -> None:
    """filedata of 3 MB (over the old 1 MB cap): uploaded to Graph, then sent by attachment_id."""
    user = await proxy.user()
    image = bytes(range(256)) * (3 * 4096)
    form = aiohttp.FormData()
    form.add_field("recipient", orjson.dumps({"id": user}).decode())
    form.add_field("messaging_type", "RESPONSE")
    attachment = {"attachment": {"type": "image", "payload": {"is_reusable": True}}}
    form.add_field("message", orjson.dumps(attachment).decode())
    form.add_field("access_token", TOKEN)
    form.add_field("filedata", image, filename="cat.png", content_type="image/png")
    status, answer = await proxy.post("/v25.0/me/messages", data=form)
    assert status == 200 and answer["message_id"], answer
    upload = next(u for u in proxy.standin.uploads if u.data == image)
    assert (upload.filename, upload.content_type, upload.attachment_type) == (
        "cat.png",
        "image/png",
        "image",
    )
    [call] = proxy.standin.calls_to(user)
    assert call.body["message"] == {
        "attachment": {"type": "image", "payload": {"attachment_id": upload.attachment_id}}
    }


async def test_an_sdk_upload_by_url_then_a_send_by_attachment_id(proxy: Proxy) -> None:
    user = await proxy.user()
    bot = proxy.bot()
    image = Image(url="https://example.com/cat.png", is_reusable=True)
    uploaded = await asyncio.to_thread(bot.upload_attachment, image)
    attachment_id = uploaded["attachment_id"]
    answer = await asyncio.to_thread(bot.send, Image(attachment_id=attachment_id).to_dict(), user)
    assert answer["message_id"], answer
    [call] = proxy.standin.calls_to(user)
    assert call.body["message"]["attachment"]["payload"]["attachment_id"] == attachment_id


# ---- 5. Meta's curl shapes -----------------------------------------------------------------------


async def test_metas_curl_sample_form_with_single_quotes(proxy: Proxy) -> None:
    user = await proxy.user()
    form = (
        f"recipient={{'id':'{user}'}}&messaging_type=RESPONSE"
        f"&message={{'text':'hello, world! {user}'}}&access_token={TOKEN}"
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    status, answer = await proxy.post(f"/v25.0/{PAGE_EU}/messages", data=form, headers=headers)
    assert status == 200 and answer["message_id"], answer
    assert proxy.standin.calls_for(f"hello, world! {user}")[0].body["recipient"] == {"id": user}


async def test_every_parameter_in_the_query_string(proxy: Proxy) -> None:
    user = await proxy.user()
    params = {
        "recipient": orjson.dumps({"id": user}).decode(),
        "messaging_type": "RESPONSE",
        "message": f"{{'text':'query {user}'}}",
        "access_token": TOKEN,
    }
    status, answer = await proxy.post("/v25.0/me/messages", params=params)
    assert status == 200 and answer["message_id"], answer
    assert proxy.standin.calls_for(f"query {user}")


# ---- 6. every answer is Graph-shaped JSON --------------------------------------------------------


def _graph_error(answer: Any) -> tuple[Any, Any]:
    error = answer["error"]
    assert {"message", "type", "code", "fbtrace_id"} <= set(error), answer
    return error["code"], error.get("error_subcode")


async def test_errors_are_graphs_shape_with_graphs_codes(proxy: Proxy) -> None:
    body = {"recipient": {"id": "u"}, "messaging_type": "RESPONSE", "message": {"text": "x"}}
    unknown_page = await proxy.post(f"/v25.0/123456789/messages?access_token={TOKEN}", json=body)
    assert unknown_page[0] == 400 and _graph_error(unknown_page[1]) == (100, 33)
    assert "Object with ID '123456789' does not exist" in unknown_page[1]["error"]["message"]
    other_page = await proxy.post(f"/v25.0/{PAGE_US}/messages?access_token={TOKEN}", json=body)
    assert other_page[0] == 400 and _graph_error(other_page[1]) == (100, 33)
    bad_token = await proxy.post("/v25.0/me/messages?access_token=nope", json=body)
    assert _graph_error(bad_token[1]) == (190, None)
    malformed = await proxy.post(
        f"/v25.0/me/messages?access_token={TOKEN}",
        data=b'{"recipient": ',
        headers={"Content-Type": "application/json"},
    )
    assert malformed[0] == 400 and _graph_error(malformed[1]) == (100, None)
    too_big = {**body, "message": {"text": "x" * (2 * 1024 * 1024)}}
    status, answer = await proxy.post(f"/v25.0/me/messages?access_token={TOKEN}", json=too_big)
    assert status == 413 and _graph_error(answer) == (100, None)
    async with proxy.http.get(f"{proxy.url}/v25.0/me/messages") as response:
        assert response.status == 405
        assert _graph_error(orjson.loads(await response.read()))[0] == 100


async def test_an_upload_over_metas_limit_is_a_graph_shaped_413(proxy: Proxy) -> None:
    user = await proxy.user()
    form = aiohttp.FormData()
    form.add_field("recipient", orjson.dumps({"id": user}).decode())
    form.add_field("message", '{"attachment": {"type": "file", "payload": {}}}')
    form.add_field("filedata", b"\0" * (UPLOAD_LIMIT + 2 * 1024 * 1024), filename="big.bin")
    status, answer = await proxy.post(f"/v25.0/me/messages?access_token={TOKEN}", data=form)
    assert status == 413 and _graph_error(answer) == (100, None)
    assert answer["windowgate"]["reason"] == "too_large"
    assert proxy.standin.calls_to(user) == []


# ---- 3. HUMAN_AGENT ------------------------------------------------------------------------------


def _human_agent(user: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "recipient": {"id": user},
        "messaging_type": "MESSAGE_TAG",
        "tag": "HUMAN_AGENT",
        "message": {"text": text},
        **extra,
    }


async def test_human_agent_inside_the_window_needs_no_proof(proxy: Proxy) -> None:
    user = await proxy.user()
    url = f"/v25.0/me/messages?access_token={TOKEN}"
    status, answer = await proxy.post(url, json=_human_agent(user, f"ha-in {user}"))
    assert status == 200 and answer["message_id"], answer
    [call] = proxy.standin.calls_for(f"ha-in {user}")
    assert call.body["messaging_type"] == "RESPONSE" and "tag" not in call.body


async def test_human_agent_outside_the_window_proves_its_human_by_persona(proxy: Proxy) -> None:
    user = await proxy.user(ago_ms=48 * HOUR)  # outside 24 h, inside HUMAN_AGENT's 7 days
    url = f"/v25.0/me/messages?access_token={TOKEN}"
    status, refused = await proxy.post(url, json=_human_agent(user, f"ha-none {user}"))
    assert status == 400 and _graph_error(refused) == (10, 2018278)
    assert refused["windowgate"]["reason"] == "window_closed"
    assert "persona_id listed in the page's personas" in refused["error"]["message"]
    stranger = _human_agent(user, f"ha-who {user}", persona_id="persona-nobody")
    assert _graph_error((await proxy.post(url, json=stranger))[1]) == (10, 2018278)
    proven = _human_agent(user, f"ha-ana {user}", persona_id=PERSONA)
    status, answer = await proxy.post(url, json=proven)
    assert status == 200 and answer["message_id"], answer
    [call] = proxy.standin.calls_to(user)
    assert call.body == proven  # HUMAN_AGENT tag and persona as the caller sent them


# ---- 4. a slow Graph answer ----------------------------------------------------------------------


async def test_a_slow_graph_answer_is_an_error_no_sdk_retries(proxy: Proxy) -> None:
    """Graph answers after 4 s; the front waits 2 s. fbmessenger on a session that retries
    5xx (as SDKs and proxies do) gets a Graph-shaped 400 that says the send may have happened,
    does not retry, and Graph receives the message once; the same Idempotency-Key, repeated
    deliberately, then reads Meta's own answer without a second send."""
    user = await proxy.user()
    text = f"slow {user}"
    proxy.standin.script("success", text=text, delay_s=SLOW_S)
    session = requests.Session()
    retry = Retry(total=3, status_forcelist=(500, 502, 503, 504), allowed_methods=None)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    bot = proxy.bot(session)
    bot.graph_url = f"{proxy.slow_url}/v25.0"
    answer = await asyncio.to_thread(bot.send, {"text": text}, user)
    error = answer["error"]
    assert (error["code"], error["is_transient"]) == (2, False), answer
    assert "may have been delivered" in error["message"]
    request_id = answer["windowgate"]["request_id"]
    await until(lambda: len(proxy.standin.calls_for(text)) == 1, "the slow call")
    assert len(proxy.standin.calls_for(text)) == 1  # the SDK did not resend it

    url = f"{proxy.slow_url}/v25.0/me/messages?access_token={TOKEN}"
    body = {"recipient": {"id": user}, "messaging_type": "RESPONSE", "message": {"text": text}}
    headers = {"Idempotency-Key": request_id}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:  # the deliberate retry: the same key until Graph's answer is known
        async with proxy.http.post(url, json=body, headers=headers) as response:
            status, again = response.status, orjson.loads(await response.read())
        if status == 200 or loop.time() > deadline:
            break
        assert again["windowgate"]["request_id"] == request_id
    assert (
        status == 200
        and again["message_id"] == proxy.standin.calls_for(text)[0].answer["message_id"]
    )
    assert len(proxy.standin.calls_for(text)) == 1
