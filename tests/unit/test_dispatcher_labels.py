"""The label routes of the dispatcher's API and `HttpGateway.add_label` / `remove_label`, against
an in-memory window (the offline gateway folds what the routes publish). The same path runs
through the real broker in tests/integration/test_labels.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas.events import LabelAdded, LabelRemoved, decode_event, encode_event
from schemas.request import SendRequest
from services.dispatcher.front.labels import LabelEvent
from tests.unit.builders import PAGE, USER
from tests.unit.front_kit import API_TOKEN, NOW, in_process_front
from windowgate.client import GatewayError, HttpGateway
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules
from windowgate.offline import OfflineGateway

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PATH = f"/v1/pages/{PAGE}/users/{USER}/labels"


@dataclass
class EventLog:
    """The events topic and the window behind it: what is published is folded."""

    gateway: OfflineGateway
    published: list[LabelEvent] = field(default_factory=list)
    broker_down: bool = False
    broker_frozen: bool = False

    async def publish(self, event: LabelEvent) -> None:
        if self.broker_down:
            raise ConnectionError("KafkaConnectionError: no broker")
        if self.broker_frozen:
            await asyncio.Event().wait()
        # through the wire format, as the window would read it
        decoded = decode_event(encode_event(event))
        self.published.append(event)
        self.gateway.apply_event(decoded)

    def labels(self) -> tuple[str, ...]:
        state = self.gateway.state(PAGE, USER)
        return () if state is None else state.labels


async def _no_requests(request: SendRequest) -> None:
    raise AssertionError("the label routes publish no send request")


@pytest.fixture
async def setup() -> AsyncIterator[tuple[TestClient[Any, Any], EventLog]]:
    rules = load_rules(None, {PAGE: PageConfig(page_id=PAGE)})
    log = EventLog(OfflineGateway(rules))
    api = in_process_front(rules, publish=_no_requests, publish_event=log.publish)
    async with TestClient(TestServer(api.app())) as client:
        yield client, log


async def test_put_publishes_label_added_and_answers_what_was_accepted(setup: Any) -> None:
    client, log = setup
    response = await client.put(f"{PATH}/vip", headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert {k: answer[k] for k in ("page_id", "user_id", "label", "action", "status")} == {
        "page_id": PAGE,
        "user_id": USER,
        "label": "vip",
        "action": "added",
        "status": "accepted",
    }
    assert answer["timestamp"] == NOW and answer["source"] == "api"
    (event,) = log.published
    assert isinstance(event, LabelAdded)
    assert (event.page_id, event.user_id, event.label, event.source, event.timestamp) == (
        PAGE,
        USER,
        "vip",
        "api",
        NOW,
    )
    assert event.key == f"{PAGE}:{USER}"
    assert log.labels() == ("vip",)


async def test_put_twice_is_one_label_and_delete_removes_it(setup: Any) -> None:
    client, log = setup
    for _ in range(2):
        assert (await client.put(f"{PATH}/vip", headers=AUTH)).status == 200
    assert (await client.put(f"{PATH}/b2b", headers=AUTH)).status == 200
    assert log.labels() == ("b2b", "vip")
    response = await client.delete(f"{PATH}/vip", headers=AUTH)
    assert response.status == 200 and (await response.json())["action"] == "removed"
    assert isinstance(log.published[-1], LabelRemoved)
    assert log.labels() == ("b2b",)
    assert (await client.delete(f"{PATH}/vip", headers=AUTH)).status == 200  # safe to repeat
    assert log.labels() == ("b2b",)


@pytest.mark.parametrize(
    ("label", "says"),
    [("white%20wine", "may only contain"), ("x" * 65, "at most 64"), ("caf%C3%A9", "may only")],
)
async def test_a_bad_label_is_400_naming_the_field(setup: Any, label: str, says: str) -> None:
    client, log = setup
    response = await client.put(f"{PATH}/{label}", headers=AUTH)
    assert response.status == 400
    answer = await response.json()
    assert (answer["error"], answer["field"]) == ("invalid_request", "label")
    assert says in answer["detail"]
    assert log.published == []


async def test_a_bad_user_id_is_400_naming_it(setup: Any) -> None:
    client, log = setup
    response = await client.put(f"/v1/pages/{PAGE}/users/a:b/labels/vip", headers=AUTH)
    assert response.status == 400 and (await response.json())["field"] == "user_id"
    assert log.published == []


async def test_a_page_not_in_the_pages_file_is_404_naming_page_id(setup: Any) -> None:
    client, log = setup
    response = await client.put(f"/v1/pages/999/users/{USER}/labels/vip", headers=AUTH)
    assert response.status == 404
    answer = await response.json()
    assert (answer["error"], answer["field"]) == ("not_found", "page_id")
    assert log.published == []


async def test_the_label_routes_need_the_bearer_token(setup: Any) -> None:
    client, log = setup
    assert (await client.put(f"{PATH}/vip")).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.delete(f"{PATH}/vip", headers=wrong)).status == 401
    assert log.published == []


@pytest.mark.parametrize("fault", ["broker_down", "broker_frozen"])
async def test_kafka_not_taking_the_event_is_503_with_retry_after(setup: Any, fault: str) -> None:
    client, log = setup
    setattr(log, fault, True)
    response = await client.put(f"{PATH}/vip", headers=AUTH)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"] == "unavailable"
    assert log.labels() == ()


async def test_the_client_adds_and_removes_labels(setup: Any) -> None:
    client, log = setup
    async with HttpGateway(str(client.server.make_url("")), API_TOKEN) as gateway:
        answer = await gateway.add_label(PAGE, USER, "vip")
        assert (answer["label"], answer["action"]) == ("vip", "added")
        assert log.labels() == ("vip",)
        await gateway.remove_label(PAGE, USER, "vip")
        assert log.labels() == ()
        with pytest.raises(GatewayError, match=r"HTTP 400 \(label\)"):
            await gateway.add_label(PAGE, USER, "white wine")
        with pytest.raises(GatewayError, match=r"HTTP 404 \(page_id\)"):
            await gateway.add_label("999", USER, "vip")
