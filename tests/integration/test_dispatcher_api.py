"""The HTTP API, the Graph proxy and the client library through a real broker.

The window worker's part (send-requests → decisions) is played by `FakeWindow` (the offline
gateway over events given here); `test_dispatcher_window.py` runs the same path with the real
worker. Delivery goes to the Graph stand-in. The proxy is driven by fbmessenger 6.0.0, an
unmodified Messenger client library from PyPI, whose `graph_url` points at the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import fbmessenger
import pytest_asyncio

from devtools.devbroker import LocalKafka, free_port, unique_name
from devtools.graph_standin import GraphStandIn
from schemas.events import (
    Event,
    MessageReceived,
    OtnOptin,
    PolicyEnforcement,
    RecurringOptin,
    UserUnavailable,
)
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.dispatcher.service import DispatcherService
from tests.integration.dispatcher_kit import (
    API_TOKEN,
    DEADLINE_S,
    HOUR,
    PAGE_EU,
    PAGE_US,
    TOKENS,
    Collector,
    FakeWindow,
    config,
    create_topics,
    publish_events,
    rules,
)
from windowgate.client import HttpGateway, KafkaGateway, new_request

BOOK = rules()
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Api:
    bootstrap: str
    topics: Topics
    url: str
    standin: GraphStandIn
    window: FakeWindow
    collector: Collector
    http: aiohttp.ClientSession

    async def know(self, *events: Event) -> None:
        """Tell the window (and the events topic, which the proxy's token index reads)."""
        self.window.know(events)
        await publish_events(self.bootstrap, self.topics.events, events)

    async def post(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.post(f"{self.url}{path}", **kw) as response:
            return response.status, await response.json(content_type=None)


def opener(user: str) -> MessageReceived:
    return MessageReceived(
        page_id=PAGE_EU, user_id=user, timestamp=now_ms() - HOUR, mid=unique_name("mid")
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka_bootstrap: str) -> AsyncIterator[Api]:
    standin = GraphStandIn(TOKENS)
    await standin.start()
    prefix = unique_name("api") + "."
    topics = await create_topics(kafka_bootstrap, prefix, 2)
    window = FakeWindow(kafka_bootstrap, topics, BOOK)
    await window.start()
    collector = Collector(kafka_bootstrap, topics)
    await collector.start()
    cfg = config(kafka_bootstrap, prefix, standin.base_url)
    service = DispatcherService(cfg, BOOK, host="127.0.0.1", page_tokens=TOKENS)
    await service.start()
    http = aiohttp.ClientSession()
    try:
        yield Api(
            kafka_bootstrap,
            topics,
            f"http://127.0.0.1:{service.port}",
            standin,
            window,
            collector,
            http,
        )
    finally:
        await http.close()
        await service.stop()
        await collector.stop()
        await window.stop()
        await standin.stop()


async def test_post_message_decided_and_delivered(api: Api) -> None:
    user = unique_name("u")
    await api.know(opener(user))
    body = {
        "request_id": unique_name("r"),
        "page_id": PAGE_EU,
        "user_id": user,
        "message": {"text": "order shipped"},
    }
    status, answer = await api.post("/v1/messages", json=body, headers=AUTH)
    assert status == 200, answer
    assert (answer["allowed"], answer["reason"], answer["mechanism"]) == (
        True,
        "window_open",
        "RESPONSE",
    )
    assert answer["delivery"]["status"] == "sent" and answer["delivery"]["message_id"]
    [call] = api.standin.calls_for("order shipped")
    assert call.body["recipient"] == {"id": user}

    again_status, again = await api.post("/v1/messages", json=body, headers=AUTH)
    assert again_status == 200 and again["duplicate"] is True
    assert again["delivery"]["message_id"] == answer["delivery"]["message_id"]
    assert len(api.standin.calls_for("order shipped")) == 1  # I3: never a second send

    async with api.http.get(f"{api.url}/v1/decisions/{body['request_id']}", headers=AUTH) as r:
        found = await r.json()
    assert r.status == 200 and found["request_id"] == body["request_id"]
    async with api.http.get(f"{api.url}/v1/decisions/never", headers=AUTH) as r:
        assert r.status == 404


async def test_post_message_refused_with_alternatives(api: Api) -> None:
    user = unique_name("u")
    await api.know(
        OtnOptin(
            page_id=PAGE_EU,
            user_id=user,
            timestamp=now_ms() - HOUR,
            token=unique_name("t"),
            topic="restock",
        )
    )
    body = {
        "request_id": unique_name("r"),
        "page_id": PAGE_EU,
        "user_id": user,
        "message": {"text": "x"},
    }
    status, answer = await api.post("/v1/messages", json=body, headers=AUTH)
    assert status == 200
    assert (answer["allowed"], answer["reason"]) == (False, "window_closed")
    assert "OTN" in [a["mechanism"] for a in answer["alternatives"]]
    assert "delivery" not in answer


async def test_v1_needs_a_bearer_token(api: Api) -> None:
    status, _ = await api.post("/v1/messages", json={})
    assert status == 401


async def test_proxy_with_an_unmodified_messenger_library(api: Api) -> None:
    user, stranger = unique_name("u"), unique_name("u")
    await api.know(opener(user))
    bot = fbmessenger.MessengerClient(TOKENS[PAGE_EU], api_version="25.0")
    bot.graph_url = f"{api.url}/v25.0"  # configuration, not a change: the library is as shipped

    sent = await asyncio.to_thread(bot.send, {"text": "via fbmessenger"}, user, "RESPONSE")
    [call] = api.standin.calls_for("via fbmessenger")
    assert sent == call.answer  # Meta's own answer, passed through
    assert call.body["messaging_type"] == "RESPONSE"

    refused = await asyncio.to_thread(bot.send, {"text": "nope"}, stranger, "UPDATE")
    assert (refused["error"]["code"], refused["error"]["error_subcode"]) == (10, 2018278)
    assert refused["windowgate"]["reason"] == "window_closed"
    assert api.standin.calls_for("nope") == []


async def test_proxy_returns_metas_error_when_meta_refuses(api: Api) -> None:
    user = unique_name("u")
    await api.know(opener(user))
    api.standin.script("error-person-unavailable", recipient=user)
    bot = fbmessenger.MessengerClient(TOKENS[PAGE_EU], api_version="25.0")
    bot.graph_url = f"{api.url}/v25.0"
    answer = await asyncio.to_thread(bot.send, {"text": "blocked?"}, user, "RESPONSE")
    assert (answer["error"]["code"], answer["error"]["error_subcode"]) == (551, 1545041)


async def test_proxy_one_time_token_recipient(api: Api) -> None:
    user, token = unique_name("u"), unique_name("otn")
    await api.know(
        OtnOptin(
            page_id=PAGE_EU, user_id=user, timestamp=now_ms() - HOUR, token=token, topic="restock"
        )
    )
    body = {"recipient": {"one_time_notif_token": token}, "message": {"text": f"back {token}"}}
    url = f"/v25.0/{PAGE_EU}/messages?access_token={TOKENS[PAGE_EU]}"
    deadline = time.monotonic() + DEADLINE_S
    while True:  # the token index reads the opt-in from the events topic
        status, answer = await api.post(url, json=body)
        if answer.get("windowgate", {}).get("reason") != "no_token_for_topic":
            break
        assert time.monotonic() < deadline, "the token index never learnt the opt-in"
        await asyncio.sleep(0.05)
    assert status == 200 and answer["message_id"], answer
    assert api.standin.calls_for(f"back {token}")[0].token == token
    status, again = await api.post(url, json=body)
    assert again["windowgate"]["reason"] == "token_spent"
    assert api.standin.token_uses()[token] == 1


async def test_client_library_over_kafka_and_http(api: Api) -> None:
    user = unique_name("u")
    await api.know(opener(user))
    async with KafkaGateway(api.bootstrap, api.topics.prefix) as gateway:
        decision = await gateway.send(
            new_request(PAGE_EU, user, message={"text": "via kafka"}), timeout_s=DEADLINE_S
        )
    assert decision is not None and decision.allowed and decision.mechanism == "RESPONSE"
    async with HttpGateway(api.url, API_TOKEN) as http:
        reply = await http.send_and_wait(
            new_request(PAGE_EU, user, message={"text": "via http"}), timeout_s=DEADLINE_S
        )
    assert reply.decision is not None and reply.decision.allowed
    assert reply.delivery is not None and reply.delivery["status"] == "sent"
    await api.collector.outcome(decision.request_id)
    assert len(api.standin.calls_for("via kafka")) == 1


BLOCKED_PAGE = "111222333444555"  # not in the pages file; blocked by policy enforcement


DAY = 24 * HOUR


def wrote(page: str, ago: int = HOUR, standby: bool = False) -> MessageReceived:
    return MessageReceived(
        page_id=page, user_id="", timestamp=now_ms() - ago, mid=unique_name("m"), standby=standby
    )


def otn_optin(ago: int = HOUR) -> OtnOptin:
    return OtnOptin(
        page_id=PAGE_EU,
        user_id="",
        timestamp=now_ms() - ago,
        token=unique_name("t"),
        topic="restock",
    )


def subscription(page: str) -> RecurringOptin:
    return RecurringOptin(
        page_id=page,
        user_id="",
        timestamp=now_ms() - HOUR,
        token=unique_name("rn"),
        topic="deals",
        frequency="WEEKLY",
    )


def refusal_cases() -> list[tuple[str, str, list[Event], dict[str, Any]]]:
    """(reason, page, the user's events, the request): one per refusal reason decide can give."""
    author = {"purpose": "human_agent", "human_author": "ana"}
    unavailable = UserUnavailable(page_id=PAGE_EU, user_id="", timestamp=now_ms() - 60_000)
    return [
        ("window_closed", PAGE_EU, [], {}),
        ("human_agent_window_closed", PAGE_EU, [wrote(PAGE_EU, 8 * DAY)], author),
        ("human_agent_not_permitted", PAGE_US, [wrote(PAGE_US)], author),
        ("human_author_missing", PAGE_EU, [wrote(PAGE_EU)], {"purpose": "human_agent"}),
        ("tag_retired", PAGE_EU, [wrote(PAGE_EU)], {"purpose": "tag", "tag": "ACCOUNT_UPDATE"}),
        (
            "mechanism_disabled",
            PAGE_US,
            [wrote(PAGE_US)],
            {"purpose": "tag", "tag": "CUSTOMER_FEEDBACK"},
        ),
        ("invalid_request", PAGE_EU, [wrote(PAGE_EU)], {"purpose": "tag"}),
        ("no_token_for_topic", PAGE_EU, [otn_optin()], {"purpose": "otn", "topic": "other"}),
        ("token_expired", PAGE_EU, [otn_optin(400 * DAY)], {"purpose": "otn", "topic": "restock"}),
        (
            "platform_unsupported",
            PAGE_EU,
            [],
            {"purpose": "otn", "topic": "restock", "platform": "instagram"},
        ),
        (
            "mechanism_ended",
            PAGE_US,
            [subscription(PAGE_US)],
            {"purpose": "recurring", "topic": "deals"},
        ),
        (
            "region_excluded",
            PAGE_EU,
            [subscription(PAGE_EU)],
            {"purpose": "marketing", "topic": "deals"},
        ),
        ("deadline_passed", PAGE_EU, [wrote(PAGE_EU)], {"send_by": now_ms() - 1000}),
        ("user_unavailable", PAGE_EU, [wrote(PAGE_EU), unavailable], {}),
        ("thread_owned_by_other_app", PAGE_EU, [wrote(PAGE_EU, standby=True)], {}),
        ("page_restricted", BLOCKED_PAGE, [wrote(BLOCKED_PAGE)], {}),
    ]


async def test_every_refusal_reason_end_to_end(api: Api) -> None:
    """Each reason through POST /v1/messages → window → decisions → back; never a Graph call."""
    await api.know(
        PolicyEnforcement(
            page_id=BLOCKED_PAGE, user_id="", timestamp=now_ms() - HOUR, action="block"
        )
    )
    seen: set[str] = set()
    for reason, page, events, ask in refusal_cases():
        user = unique_name("u")
        await api.know(*(replace(e, user_id=user) for e in events))
        text = f"refusal {reason} {user}"
        body = {
            "request_id": unique_name("r"),
            "page_id": page,
            "user_id": user,
            "message": {"text": text},
            **ask,
        }
        status, answer = await api.post("/v1/messages", json=body, headers=AUTH)
        assert status == 200, (reason, answer)
        assert (answer["allowed"], answer["reason"]) == (False, reason), (reason, answer)
        assert answer["detail"]
        seen.add(answer["reason"])
        assert api.standin.calls_for(text) == []

    cooled = unique_name("u")  # the last refusal: a recurring token inside its cooldown
    await api.know(replace(subscription(PAGE_EU), user_id=cooled))
    ask = {"page_id": PAGE_EU, "user_id": cooled, "purpose": "recurring", "topic": "deals"}
    first = {"request_id": unique_name("r"), "message": {"text": "deals 1"}, **ask}
    second = {"request_id": unique_name("r"), "message": {"text": "deals 2"}, **ask}
    assert (await api.post("/v1/messages", json=first, headers=AUTH))[1]["allowed"]
    _, answer = await api.post("/v1/messages", json=second, headers=AUTH)
    assert (answer["allowed"], answer["reason"]) == (False, "cooldown")
    assert len(seen) == len(refusal_cases())  # one case per reason, no two alike


async def test_a_misspelt_field_is_400_and_never_published(api: Api) -> None:
    user = unique_name("u")
    await api.know(opener(user))
    body = {"request_id": unique_name("r"), "page_id": PAGE_EU, "user_id": user, "purpse": "otn"}
    status, answer = await api.post("/v1/messages", json=body, headers=AUTH)
    assert (status, answer["field"]) == (400, "purpse")
    assert "did you mean 'purpose'" in answer["detail"]
    async with api.http.get(f"{api.url}/v1/decisions/{body['request_id']}", headers=AUTH) as r:
        assert r.status == 404  # nothing was published, so nothing was decided


# ---- broker outage: 503 with Retry-After within DISPATCHER_WAIT_S -------------------------------

OUTAGE_WAIT_S = 2.0
OUTAGE_SLACK_S = 1.5
"""An answer later than the wait plus this is the old hang (13-25 s), not scheduling noise."""


async def _post_timed(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, float]:
    started = time.monotonic()
    limit = aiohttp.ClientTimeout(total=OUTAGE_WAIT_S + 10)  # fail, not hang, on the old behaviour
    async with http.post(f"{url}/v1/messages", json=body, headers=AUTH, timeout=limit) as response:
        answer = await response.json(content_type=None)
        if response.status == 503:
            assert response.headers["Retry-After"] == "2", response.headers
        return response.status, answer, time.monotonic() - started


async def test_broker_outage_is_503_with_retry_after_within_the_wait(tmp_path: Path) -> None:
    """A broker of this test's own (never the shared one): frozen, then stopped, then back."""
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    kafka = LocalKafka(port=port, controller_port=controller_port, data_dir=tmp_path / "kafka")
    bootstrap = kafka.start()
    pid = int((tmp_path / "kafka" / "broker.pid").read_text())
    prefix = unique_name("api-outage") + "."
    topics = await create_topics(bootstrap, prefix, 2)
    window = FakeWindow(bootstrap, topics, BOOK)
    cfg = config(
        bootstrap, prefix, "http://127.0.0.1:9", role="api", wait_s=OUTAGE_WAIT_S,
        outcome_wait_s=0.0, token_index=False,
    )  # fmt: skip
    service = DispatcherService(cfg, BOOK, host="127.0.0.1", page_tokens=TOKENS)
    http = aiohttp.ClientSession()
    try:
        await window.start()
        await service.start()
        url = f"http://127.0.0.1:{service.port}"
        user = unique_name("u")
        window.know([opener(user)])

        def ask(name: str) -> dict[str, Any]:
            return {
                "request_id": f"{prefix}{name}",
                "page_id": PAGE_EU,
                "user_id": user,
                "message": {"text": f"outage {name}"},
            }

        status, answer, _ = await _post_timed(http, url, ask("before"))
        assert (status, answer.get("reason")) == (200, "window_open"), answer

        # 1. Frozen broker: connections open, nothing answers; the producer would wait.
        os.kill(pid, signal.SIGSTOP)
        status, answer, took = await _post_timed(http, url, ask("frozen"))
        os.kill(pid, signal.SIGCONT)
        assert status == 503, answer
        assert took < OUTAGE_WAIT_S + OUTAGE_SLACK_S
        assert answer["request_id"] == f"{prefix}frozen" and "same request_id" in answer["detail"]

        # 2. Stopped broker: connections refused.
        kafka.stop()
        status, answer, took = await _post_timed(http, url, ask("stopped"))
        assert status == 503, answer
        assert took < OUTAGE_WAIT_S + OUTAGE_SLACK_S

        # 3. Back on the same port with the same data: retrying with the same request_id gets
        #    the request decided, once (a 503'd request that did land later is a duplicate).
        kafka.start()
        deadline = time.monotonic() + 90
        for name in ("frozen", "stopped"):
            while True:
                status, answer, _ = await _post_timed(http, url, ask(name))
                if status == 200:
                    break
                assert status in (202, 503), answer
                assert time.monotonic() < deadline, f"{name}: never decided after the outage"
                await asyncio.sleep(0.5)
            assert (answer["request_id"], answer["reason"]) == (f"{prefix}{name}", "window_open")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await http.close()
        for stop in (service.stop, window.stop):
            # A client still waiting on a dead broker must not keep the broker (or the suite) up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop(), 30)
        kafka.stop()
