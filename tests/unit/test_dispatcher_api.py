"""The HTTP API and the Graph proxy, with an in-memory window (no broker): the shapes callers and
unmodified Messenger libraries see. The same paths run against Kafka in the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import fbmessenger
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas.decision import DecisionRecord
from schemas.request import SendRequest
from schemas.topics import Topics
from services.dispatcher.delivery.dispatchlog import Done
from services.dispatcher.front.feeds import OutcomeWatcher, TokenIndex, TokenOwner
from tests.unit.builders import PAGE, T0, USER, message, otn
from tests.unit.front_kit import API_TOKEN, NOW, in_process_front
from windowgate.client import DecisionWatcher
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules
from windowgate.offline import OfflineGateway

PAGE_TOKEN = "page-access-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Window:
    """Fake window + worker: decides with the offline gateway, 'delivers' every allowed one."""

    gateway: OfflineGateway
    decisions: DecisionWatcher
    outcomes: OutcomeWatcher
    deliver: bool = True
    decide: bool = True
    broker_down: bool = False
    broker_frozen: bool = False
    published: list[SendRequest] = field(default_factory=list)

    async def publish(self, request: SendRequest) -> None:
        if self.broker_down:
            raise ConnectionError("KafkaConnectionError: no broker")
        if self.broker_frozen:  # a producer waiting for a broker that never answers
            await asyncio.Event().wait()
        self.published.append(request)
        if not self.decide:
            return
        decision = self.gateway.decide(request, NOW)

        def later() -> None:
            self.decisions.remember(DecisionRecord(decision, request.message))
            if self.deliver and decision.allowed and not decision.duplicate:
                self.outcomes.remember(
                    Done(
                        request_id=request.request_id,
                        page_id=request.page_id,
                        user_id=request.user_id,
                        at=NOW,
                        status="sent",
                        message_id="m_1",
                        graph_status=200,
                        graph_body={"recipient_id": request.user_id, "message_id": "m_1"},
                    )
                )

        asyncio.get_running_loop().call_soon(later)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[TestClient[Any, Any], Window]]:
    rules = load_rules(None, {PAGE: PageConfig(page_id=PAGE)})
    gateway = OfflineGateway(rules)
    gateway.apply_events([message(T0, "m-open"), otn(T0, "otn-1", "restock")])
    decisions = DecisionWatcher("unused:9092", Topics("t."), recent=100)
    outcomes = OutcomeWatcher("unused:9092", "t.dispatch-log", recent=100)
    tokens = TokenIndex("unused:9092", "t.events")
    tokens.owners["otn-1"] = TokenOwner(PAGE, USER, "restock", "messenger")
    tokens.is_caught_up = True
    window = Window(gateway, decisions, outcomes)
    api = in_process_front(
        rules,
        decisions=decisions,
        outcomes=outcomes,
        tokens=tokens,
        publish=window.publish,
        page_tokens={PAGE: PAGE_TOKEN},
    )
    async with TestClient(TestServer(api.app())) as client:
        yield client, window


def send_request(request_id: str, **kw: Any) -> dict[str, Any]:
    return {"request_id": request_id, "page_id": PAGE, "user_id": USER, **kw}


async def test_post_message_returns_the_decision_and_delivery(setup: Any) -> None:
    client, window = setup
    body = send_request("r1", message={"text": "hi"})
    response = await client.post("/v1/messages", json=body, headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert (answer["allowed"], answer["reason"], answer["mechanism"]) == (
        True,
        "window_open",
        "RESPONSE",
    )
    assert answer["delivery"]["status"] == "sent"
    assert window.published[0].created_at == NOW  # filled in when the caller left it out


async def test_repeated_request_id_gets_the_first_decision(setup: Any) -> None:
    client, _ = setup
    body = send_request("r2", purpose="otn", topic="restock", message={"text": "back"})
    first = await (await client.post("/v1/messages", json=body, headers=AUTH)).json()
    again = await (await client.post("/v1/messages", json=body, headers=AUTH)).json()
    assert first["allowed"] and first["token"] == "otn-1" and not first["duplicate"]
    assert again["duplicate"] is True and again["token"] == "otn-1"


async def test_refusal_lists_alternatives(setup: Any) -> None:
    client, _ = setup
    body = send_request("r3", purpose="otn", topic="price-drop", message={"text": "x"})
    answer = await (await client.post("/v1/messages", json=body, headers=AUTH)).json()
    assert (answer["allowed"], answer["reason"]) == (False, "no_token_for_topic")
    assert "delivery" not in answer
    assert {a["mechanism"] for a in answer["alternatives"]} >= {"RESPONSE"}


async def test_get_decision(setup: Any) -> None:
    client, _ = setup
    await client.post("/v1/messages", json=send_request("r4", message={"text": "x"}), headers=AUTH)
    found = await client.get("/v1/decisions/r4", headers=AUTH)
    assert found.status == 200 and (await found.json())["request_id"] == "r4"
    missing = await client.get("/v1/decisions/never-seen", headers=AUTH)
    assert missing.status == 404 and "window service" in (await missing.json())["detail"]


async def test_no_decision_in_time_is_202_with_a_link(setup: Any) -> None:
    client, window = setup
    window.decide = False
    response = await client.post("/v1/messages", json=send_request("r5"), headers=AUTH)
    assert response.status == 202
    assert response.headers["Location"] == "/v1/decisions/r5"
    assert (await response.json())["status"] == "pending"


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"page_id": PAGE, "user_id": USER}, "request_id"),
        (send_request("r", purpose="x"), "purpose"),
        (send_request("r", purpse="otn", topc="x"), "purpse"),
        (send_request("r", message={"text": "hi"}, priority="high"), "priority"),
    ],
)
async def test_bad_request_is_400_naming_the_field(setup: Any, body: Any, field_name: str) -> None:
    client, window = setup
    response = await client.post("/v1/messages", json=body, headers=AUTH)
    assert response.status == 400 and (await response.json())["field"] == field_name
    assert window.published == []


async def test_a_misspelt_field_is_refused_never_decided_as_auto(setup: Any) -> None:
    client, window = setup
    body = send_request("r-typo", purpse="otn", topc="restock")
    answer = await (await client.post("/v1/messages", json=body, headers=AUTH)).json()
    assert answer["error"] == "invalid_request"
    assert "unknown field (did you mean 'purpose'?)" in answer["detail"]
    assert "also unknown: topc" in answer["detail"]
    assert window.published == []


async def test_v1_needs_the_bearer_token(setup: Any) -> None:
    client, window = setup
    response = await client.post("/v1/messages", json=send_request("r6"))
    assert response.status == 401
    wrong = await client.get("/v1/decisions/r6", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and window.published == []


async def test_kafka_down_is_503(setup: Any) -> None:
    client, window = setup
    window.broker_down = True
    response = await client.post("/v1/messages", json=send_request("r7"), headers=AUTH)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"  # wait_s 0.3, rounded up to whole seconds
    answer = await response.json()
    assert "not accepted" in answer["detail"] and "same request_id" in answer["detail"]
    assert answer["request_id"] == "r7"
    body = {"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "x"}}
    proxied = await client.post(f"/v25.0/me/messages?access_token={PAGE_TOKEN}", json=body)
    assert proxied.status == 503 and (await proxied.json())["error"]["code"] == 2
    assert proxied.headers["Retry-After"] == "1"


async def test_a_broker_that_never_answers_is_503_within_the_wait(setup: Any) -> None:
    """A producer does not fail while the broker is frozen: it waits. The caller must not."""
    client, window = setup
    window.broker_frozen = True
    # The bound only stops a hang from hanging the suite; the API's own wait is 0.3 s.
    response = await asyncio.wait_for(
        client.post("/v1/messages", json=send_request("r-frozen"), headers=AUTH), 10
    )
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert "within 0.3 s" in (await response.json())["detail"]
    body = {"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "x"}}
    url = f"/v25.0/me/messages?access_token={PAGE_TOKEN}"
    proxied = await asyncio.wait_for(client.post(url, json=body), 10)
    # The producer may still deliver it: not a 503 that invites a blind retry.
    answer = await proxied.json()
    assert proxied.status == 400 and answer["error"]["is_transient"] is False
    assert "may have been delivered" in answer["error"]["message"]


# ---- the proxy ----------------------------------------------------------------------------------


async def test_proxy_with_an_unmodified_messenger_library(setup: Any) -> None:
    """fbmessenger 6.0.0 pointed at the proxy: allowed goes through, refused is Meta's error."""
    client, window = setup
    bot = fbmessenger.MessengerClient(PAGE_TOKEN, api_version="25.0")
    bot.graph_url = str(client.make_url("/v25.0"))
    answer = await asyncio.to_thread(bot.send, {"text": "hello"}, USER, "RESPONSE")
    assert answer == {"recipient_id": USER, "message_id": "m_1"}
    assert window.published[-1].purpose == "response"
    refused = await asyncio.to_thread(bot.send, {"text": "hi"}, "someone-new", "RESPONSE")
    assert refused["error"]["code"] == 10 and refused["error"]["error_subcode"] == 2018278
    assert refused["windowgate"]["reason"] == "window_closed"


async def test_proxy_answers_token_and_page_errors_as_graph_does(setup: Any) -> None:
    """A token of no page is 190; another page's node (or an unknown one) is Graph's 100/33,
    never 190 (that would make an operator revoke a good token); no token at all is 104."""
    client, window = setup
    body = {"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "x"}}
    response = await client.post("/v25.0/me/messages?access_token=wrong", json=body)
    assert response.status == 400 and (await response.json())["error"]["code"] == 190
    other_page = await client.post(f"/v25.0/999/messages?access_token={PAGE_TOKEN}", json=body)
    error = (await other_page.json())["error"]
    assert other_page.status == 400
    assert (error["code"], error["error_subcode"], error["type"]) == (
        100,
        33,
        "GraphMethodException",
    )
    assert "Object with ID '999' does not exist" in error["message"]
    missing = await client.post("/v25.0/me/messages", json=body)
    assert (await missing.json())["error"]["code"] == 104
    assert window.published == []


async def test_proxy_otn_token_recipient(setup: Any) -> None:
    client, window = setup
    body = {"recipient": {"one_time_notif_token": "otn-1"}, "message": {"text": "back!"}}
    response = await client.post(
        f"/v25.0/{PAGE}/messages",
        json=body,
        headers={"Authorization": f"Bearer {PAGE_TOKEN}", "Idempotency-Key": "k-1"},
    )
    assert response.status == 200
    request = window.published[-1]
    assert (request.request_id, request.purpose, request.topic, request.user_id) == (
        "k-1",
        "otn",
        "restock",
        USER,
    )
    unknown = {"recipient": {"one_time_notif_token": "nope"}, "message": {"text": "x"}}
    response = await client.post(f"/v25.0/{PAGE}/messages?access_token={PAGE_TOKEN}", json=unknown)
    assert (await response.json())["windowgate"]["reason"] == "no_token_for_topic"


HUMAN_AGENT_SEND = {
    "recipient": {"id": USER},
    "messaging_type": "MESSAGE_TAG",
    "tag": "HUMAN_AGENT",
    "message": {"text": "a person here"},
}


async def test_proxy_human_agent_inside_the_window_needs_no_header(setup: Any) -> None:
    """Inside the window the window suffices: no header, decided as a RESPONSE; a named human
    (the header) asks for HUMAN_AGENT itself, which this page is not permitted."""
    client, window = setup
    body = HUMAN_AGENT_SEND
    url = f"/v25.0/me/messages?access_token={PAGE_TOKEN}"
    response = await client.post(url, json=body)
    assert response.status == 200, await response.json()
    assert (window.published[-1].purpose, window.published[-1].human_author) == ("response", None)
    named = await client.post(url, json=body, headers={"X-Windowgate-Human-Author": "ana"})
    assert window.published[-1].human_author == "ana"
    answer = await named.json()
    assert answer["windowgate"]["reason"] == "human_agent_not_permitted"
    assert (answer["error"]["code"], answer["error"]["error_subcode"]) == (10, 2018278)


async def test_proxy_refuses_an_unknown_windowgate_header_naming_it(setup: Any) -> None:
    client, window = setup
    body = HUMAN_AGENT_SEND
    url = f"/v25.0/me/messages?access_token={PAGE_TOKEN}"
    # Ignored, the misspelt header would send the request without its human author.
    response = await client.post(url, json=body, headers={"X-Windowgate-Human-Autor": "ana"})
    assert response.status == 400
    answer = await response.json()
    assert answer["error"]["code"] == 100
    assert (
        "X-Windowgate-Human-Autor (did you mean 'X-Windowgate-Human-Author'?)"
        in (answer["error"]["message"])
    )
    assert answer["windowgate"]["reason"] == "invalid_request"
    assert window.published == []
    headers = {"x-windowgate-human-author": "ana", "X-WINDOWGATE-REQUEST-ID": "rq-1"}
    await client.post(url, json=body, headers=headers)  # header names are case-insensitive
    assert (window.published[-1].human_author, window.published[-1].request_id) == ("ana", "rq-1")


async def test_proxy_form_encoded_body(setup: Any) -> None:
    client, window = setup
    form = {
        "recipient": orjson.dumps({"id": USER}).decode(),
        "messaging_type": "UPDATE",
        "message": '{"text": "form"}',
        "access_token": PAGE_TOKEN,
    }
    response = await client.post("/v25.0/me/messages", data=form)
    assert response.status == 200
    assert window.published[-1].purpose == "update"
    assert window.published[-1].message == {"text": "form"}
