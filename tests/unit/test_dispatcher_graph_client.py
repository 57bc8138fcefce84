"""The HTTP client against the Graph stand-in: every kind of answer, classified as Meta means it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from devtools.devbroker import free_port
from devtools.graph_standin import GraphStandIn
from services.dispatcher.delivery.graph import GraphClient
from windowgate.meta.send_api import GraphCall

PAGE = "682498171943165"
TOKEN = "page-token"


def call(body: dict[str, Any] | None = None, path: str = f"/v25.0/{PAGE}/messages") -> GraphCall:
    body = body or {
        "recipient": {"id": "u1"},
        "messaging_type": "RESPONSE",
        "message": {"text": "hi"},
    }
    return GraphCall(path, body, "text", PAGE)


@pytest.fixture
async def standin() -> AsyncIterator[GraphStandIn]:
    s = GraphStandIn({PAGE: TOKEN})
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def client(standin: GraphStandIn) -> AsyncIterator[GraphClient]:
    c = GraphClient(standin.base_url, timeout_s=0.5)
    await c.start()
    yield c
    await c.close()


async def test_success(client: GraphClient, standin: GraphStandIn) -> None:
    answer = await client.post(call(), TOKEN)
    assert answer.verdict.error_class == "ok" and answer.status == 200
    assert answer.verdict.message_id and answer.verdict.message_id.startswith("m_")
    [seen] = standin.calls
    assert seen.body["recipient"] == {"id": "u1"} and seen.page_id == PAGE


async def test_wrong_token_is_auth(client: GraphClient) -> None:
    answer = await client.post(call(), "not-the-token")
    assert answer.verdict.error_class == "auth" and answer.verdict.code == 190


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("error-outside-window", "window_closed"),
        ("error-person-unavailable", "user_unavailable"),
        ("error-rate-limit", "rate_limited"),
        ("error-invalid-parameter-retired-tag", "invalid"),
    ],
)
async def test_scripted_fixture_errors(
    client: GraphClient, standin: GraphStandIn, fixture: str, expected: str
) -> None:
    standin.script(fixture, recipient="u1")
    answer = await client.post(call(), TOKEN)
    assert answer.verdict.error_class == expected
    assert answer.body is not None and "error" in answer.body


async def test_timeout_is_ambiguous_and_was_delivered(
    client: GraphClient, standin: GraphStandIn
) -> None:
    standin.script("timeout", recipient="u1", delay_s=1.0)
    answer = await client.post(call(), TOKEN)
    assert answer.verdict.error_class == "transient"
    assert answer.verdict.action.status == "unknown"


async def test_dropped_connection_is_ambiguous(client: GraphClient, standin: GraphStandIn) -> None:
    standin.script("disconnect", recipient="u1")
    answer = await client.post(call(), TOKEN)
    assert answer.verdict.error_class == "transient"


async def test_server_error_is_ambiguous(client: GraphClient, standin: GraphStandIn) -> None:
    standin.script("server_error", recipient="u1")
    answer = await client.post(call(), TOKEN)
    assert answer.verdict.error_class == "transient" and answer.status == 500


async def test_nothing_listening_is_unreachable_and_retryable() -> None:
    client = GraphClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    try:
        answer = await client.post(call(), TOKEN)
    finally:
        await client.close()
    assert answer.verdict.error_class == "unreachable"
    assert answer.verdict.action.retry == "backoff"


async def test_standin_checks_the_body_like_meta(client: GraphClient) -> None:
    no_type = {"recipient": {"id": "u1"}, "message": {"text": "hi"}}
    assert (await client.post(call(no_type), TOKEN)).verdict.error_class == "invalid"
    tag_less = {**no_type, "messaging_type": "MESSAGE_TAG"}
    assert (await client.post(call(tag_less), TOKEN)).verdict.error_class == "invalid"
    otn = {"recipient": {"one_time_notif_token": "t1"}, "message": {"text": "hi"}}
    assert (await client.post(call(otn), TOKEN)).verdict.error_class == "ok"
    assert (await client.post(call(otn), TOKEN)).verdict.error_class == "invalid"  # used up


async def test_standin_rate_limit() -> None:
    standin = GraphStandIn({PAGE: TOKEN}, rate_per_page=5)
    await standin.start()
    client = GraphClient(standin.base_url, timeout_s=2)
    try:
        answers = [await client.post(call(), TOKEN) for _ in range(10)]
    finally:
        await client.close()
        await standin.stop()
    classes = [a.verdict.error_class for a in answers]
    assert "rate_limited" in classes and classes[0] == "ok"
    assert standin.double_used_tokens() == {}
