"""Labels through the real broker: the dispatcher's label API and a label rule of the pages file,
folded by the real window worker (a subprocess), shown by its user query, and rebuilt the same by
`windowgate replay` from the events topic alone (I8)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest_asyncio

from devtools.devbroker import unique_name
from devtools.window_harness import WindowProcess
from schemas.events import Event, LabelAdded, decode_event
from schemas.topics import Topics
from services.common.runtime import now_ms
from services.dispatcher.service import DispatcherService
from services.window.replay import read_to_end
from tests.integration.dispatcher_kit import (
    API_TOKEN,
    PAGE_EU,
    PAGES_JSON,
    REPO_ROOT,
    config,
    create_topics,
    publish_events,
    window_worker,
)
from windowgate.client import HttpGateway
from windowgate.core.pages import parse_pages
from windowgate.core.rulebook import load_rules
from windowgate.meta.normalise import normalise

PARTITIONS = 2
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
LABEL_RULES = [
    {"when": "postback", "prefix": "WINE_", "label": "wine"},
    {"when": "quick_reply", "regex": "SIZE_[SML]", "label": "sized"},
]
PAGES = {
    "pages": {
        page_id: {**entry, "label_rules": LABEL_RULES} if page_id == PAGE_EU else entry
        for page_id, entry in PAGES_JSON["pages"].items()
    }
}


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    topics: Topics
    window: WindowProcess
    url: str
    http: aiohttp.ClientSession

    async def labels(self, user: str, method: str, label: str) -> tuple[int, Any]:
        url = f"{self.url}/v1/pages/{PAGE_EU}/users/{user}/labels/{label}"
        async with self.http.request(method, url, headers=AUTH) as response:
            return response.status, await response.json()

    async def until_labels(self, user: str, expected: list[str]) -> dict[str, Any]:
        latest: Any = None
        for _ in range(600):
            status, body, _ = await self.window.get(f"/v1/pages/{PAGE_EU}/users/{user}")
            latest = body
            if status == 200 and body["state"].get("labels", []) == expected:
                return dict(body)
            await asyncio.sleep(0.05)
        raise AssertionError(f"labels of {user} never became {expected}: {latest}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(kafka_bootstrap: str, tmp_path_factory: Any) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("labels")
    prefix = unique_name("labels") + "."
    topics = await create_topics(kafka_bootstrap, prefix, PARTITIONS)
    pages_file = tmp / "pages.json"
    pages_file.write_bytes(orjson.dumps(PAGES))
    window = window_worker(kafka_bootstrap, prefix, tmp, PARTITIONS, pages_file).start()
    service = DispatcherService(
        config(kafka_bootstrap, prefix, "http://127.0.0.1:9", partitions=PARTITIONS, role="api"),
        load_rules(None, parse_pages(PAGES)),
        host="127.0.0.1",
    )
    http = aiohttp.ClientSession()
    try:
        await window.wait_ready()
        await service.start()
        url = f"http://127.0.0.1:{service.port}"
        yield Stack(kafka_bootstrap, prefix, topics, window, url, http)
    finally:
        await http.close()
        await service.stop()
        await window.terminate()


def postback_body(user: str, payload: str, ts: int) -> dict[str, Any]:
    """A postback as Meta sends it to the webhook."""
    return {
        "object": "page",
        "entry": [
            {
                "id": PAGE_EU,
                "time": ts,
                "messaging": [
                    {
                        "sender": {"id": user},
                        "recipient": {"id": PAGE_EU},
                        "timestamp": ts,
                        "postback": {"title": "White", "payload": payload, "mid": f"m_{user}"},
                    }
                ],
            }
        ],
    }


async def events_of(stack: Stack, user: str) -> list[Event]:
    found: list[Event] = []

    def keep(records: list[tuple[int, int, bytes | None, bytes | None]]) -> None:
        for _, _, key, value in records:
            if key == f"{PAGE_EU}:{user}".encode() and value is not None:
                found.append(decode_event(value))

    await read_to_end(stack.bootstrap, stack.topics.events, keep, io.StringIO(), "", quiet=True)
    return found


async def run_replay(stack: Stack) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "services.window", "replay", "--bootstrap", stack.bootstrap,
        "--prefix", stack.prefix, "--partitions", str(PARTITIONS), "--quiet",
    ]  # fmt: skip
    return await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


async def test_api_label_and_rule_label_show_in_the_query_and_replay_agrees(stack: Stack) -> None:
    user = str(10**15 + now_ms() % 10**9)  # digits: the webhook's sender id is a Meta id
    status, answer = await stack.labels(user, "PUT", "vip")
    assert status == 200, answer
    assert (answer["label"], answer["status"]) == ("vip", "accepted")
    assert (await stack.labels(user, "PUT", "vip"))[0] == 200  # twice: still one label

    events = normalise(postback_body(user, "WINE_WHITE", now_ms() - 60_000)).events
    await publish_events(stack.bootstrap, stack.topics.events, events)
    view = await stack.until_labels(user, ["vip", "wine"])
    assert view["known"] is True
    assert view["state"]["last_opener_at"] is not None  # the postback itself was folded

    status, answer = await stack.labels(user, "DELETE", "vip")
    assert status == 200 and answer["action"] == "removed"
    await stack.until_labels(user, ["wine"])

    replay = await run_replay(stack)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "no differences" in replay.stdout

    mine = await events_of(stack, user)
    sources = [(e.label, e.source) for e in mine if isinstance(e, LabelAdded)]
    assert sources == [("vip", "api"), ("vip", "api"), ("wine", "rule:WINE_WHITE")]
    assert [type(e).__name__ for e in mine].count("LabelRemoved") == 1


async def test_the_client_and_the_errors_through_the_real_service(stack: Stack) -> None:
    user = unique_name("u")
    async with HttpGateway(stack.url, API_TOKEN) as gateway:
        await gateway.add_label(PAGE_EU, user, "b2b")
        await stack.until_labels(user, ["b2b"])
        await gateway.remove_label(PAGE_EU, user, "b2b")
        await stack.until_labels(user, [])
    status, answer = await stack.labels(user, "PUT", "not%20ok")
    assert (status, answer["field"]) == (400, "label")
    url = f"{stack.url}/v1/pages/999/users/{user}/labels/vip"
    async with stack.http.put(url, headers=AUTH) as response:
        assert response.status == 404
        assert (await response.json())["field"] == "page_id"
    async with stack.http.put(url) as response:
        assert response.status == 401
