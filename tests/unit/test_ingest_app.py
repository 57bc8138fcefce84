"""The ingest webhook over HTTP (aiohttp test client), with an in-memory fake publisher.

Every status of DESIGN §4.3 / platform-rules §6 on Meta's fixture bodies. The fake stands in for
Kafka's acknowledgements only; the Kafka behaviour itself is tested against a real broker in
tests/integration/test_ingest_kafka.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from schemas.events import MessageReceived, decode_event, encode_event
from schemas.topics import Topics
from services.common.logs import JsonFormatter
from services.ingest.app import ACCEPTED, INGEST, create_app
from services.ingest.config import IngestConfig
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import BrokerUnavailable, Health, PublishTimeout, Record
from services.ingest.signature import HEADER, sign
from tests import fixtures_path
from windowgate.core.fold import empty_state, fold
from windowgate.meta.normalise import normalise

SECRET = b"test-app-secret-5f2a"
VERIFY_TOKEN = "test-verify-token-91c4"
TOPICS = Topics("test.")
PAGE = "682498171943165"
USER = "1254459154682919"
NOW_MS = 1_800_000_000_000

CONFIG = IngestConfig(
    app_secret=SECRET,
    verify_token=VERIFY_TOKEN,
    max_body_bytes=64 * 1024,
    publish_timeout_s=0.3,
    recent_keys=1_000,
    host="127.0.0.1",
    port=0,
    demo=False,
)


class FakePublisher:
    """In-memory `Publisher`: records what was acknowledged; can be told to be down or slow.

    mode "ok": every record acknowledged; "down": refused at once; "slow": no acknowledgement
    before the deadline; "partial": the first record stored, then the connection lost.
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.acked: list[Record] = []
        self.calls = 0
        self.started = False
        self.closed = False
        self._never = asyncio.Event()

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def publish(self, records: Sequence[Record], timeout_s: float) -> None:
        self.calls += 1
        if self.mode == "down":
            raise BrokerUnavailable("fake broker is down")
        if self.mode == "slow":
            try:
                await asyncio.wait_for(self._never.wait(), timeout_s)
            except TimeoutError:
                raise PublishTimeout(f"fake broker: no ack within {timeout_s} s") from None
        if self.mode == "partial":
            self.acked.extend(records[:1])
            raise BrokerUnavailable("fake broker: connection lost after one record")
        self.acked.extend(records)

    async def health(self, timeout_s: float) -> Health:
        ok = self.mode == "ok"
        return Health(ok, "fake broker " + ("answers" if ok else "does not answer"))

    def on(self, topic: str) -> list[Record]:
        return [r for r in self.acked if r[0] == topic]


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


async def start_client(
    publisher: FakePublisher | None = None,
    metrics: IngestMetrics | None = None,
    **changes: Any,
) -> TestClient[Any, Any]:
    """An app on a free port, configured as CONFIG with `changes`; the caller closes it."""
    app = create_app(
        replace(CONFIG, **changes),
        publisher or FakePublisher(),
        TOPICS,
        metrics=metrics,
        clock=lambda: NOW_MS,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """`client = await make_client(publisher, **config_changes)`, closed after the test."""
    clients: list[TestClient[Any, Any]] = []

    async def make(*args: Any, **kwargs: Any) -> TestClient[Any, Any]:
        client = await start_client(*args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def fixture(name: str) -> bytes:
    return fixtures_path.fixture_bytes("meta-webhooks", name)


def all_fixtures() -> list[Path]:
    paths = sorted(fixtures_path.fixtures_dir("meta-webhooks").glob("*.json"))
    assert len(paths) >= 15, paths
    return paths


def signed(body: bytes, secret: bytes = SECRET) -> dict[str, str]:
    return {HEADER: sign(secret, body), "Content-Type": "application/json"}


async def post(
    client: TestClient[Any, Any], body: bytes, headers: dict[str, str] | None = None
) -> ClientResponse:
    return await client.post(
        "/webhook", data=body, headers=signed(body) if headers is None else headers
    )


def expected_records(body: bytes) -> list[Record]:
    """What a body must publish: each event keyed "<page_id>:<user_id>", in body order."""
    events = normalise(orjson.loads(body)).events
    return [(TOPICS.events, e.key.encode(), encode_event(e)) for e in events]


def body_with(*elements: dict[str, Any], page: str = PAGE, changes: Any = None) -> bytes:
    entry: dict[str, Any] = {"id": page, "time": NOW_MS, "messaging": list(elements)}
    if changes is not None:
        entry["changes"] = changes
    return orjson.dumps({"object": "page", "entry": [entry]})


def message_element(mid: str, ts: int = NOW_MS - 1_000, text: str = "hi") -> dict[str, Any]:
    return {
        "sender": {"id": USER},
        "recipient": {"id": PAGE},
        "timestamp": ts,
        "message": {"mid": mid, "text": text},
    }


# ---- GET /webhook: Meta's subscription check ------------------------------------------------


async def test_verification_answers_the_challenge(make_client: MakeClient) -> None:
    client = await make_client()
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    response = await client.get("/webhook", params=params)
    assert response.status == 200
    assert await response.text() == "1158201444"
    assert response.content_type == "text/plain"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "42"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN[:-1], "hub.challenge": "42"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "42"},
        {"hub.mode": "subscribe", "hub.challenge": "42"},
        {"hub.mode": "subscribe", "hub.verify_token": "ünïcödé", "hub.challenge": "42"},
        {},
    ],
)
async def test_verification_refused_without_subscribe_and_the_token(
    make_client: MakeClient, params: dict[str, str]
) -> None:
    client = await make_client()
    response = await client.get("/webhook", params=params)
    assert response.status == 403
    assert "42" not in await response.text()


async def test_verification_without_a_challenge_is_a_bad_request(make_client: MakeClient) -> None:
    client = await make_client()
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}
    response = await client.get("/webhook", params=params)
    assert response.status == 400


# ---- POST /webhook: the happy path ----------------------------------------------------------


async def test_every_fixture_is_published_keyed_by_user(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    for path in all_fixtures():
        body = path.read_bytes()
        before = len(publisher.acked)
        response = await post(client, body)
        assert response.status == 200, (path.name, await response.text())
        assert await response.text() == ACCEPTED
        published = publisher.acked[before:]
        assert published == expected_records(body), path.name
        assert published, f"{path.name} produced no event"
    assert publisher.on(TOPICS.dead_letter) == []


async def test_a_batch_publishes_every_entry_and_element(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    response = await post(client, fixture("14-batch-two-entries.json"))
    assert response.status == 200
    keys = [key for _, key, _ in publisher.acked]
    assert keys == [
        b"682498171943165:1254459154682919",
        b"542998526103632:5794982867201265",
        b"542998526103632:5794982867201265",
    ]


async def test_a_page_wide_event_is_keyed_by_the_page_alone(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    response = await post(client, fixture("12-policy-enforcement-block.json"))
    assert response.status == 200
    [(topic, key, value)] = publisher.acked
    assert (topic, key) == (TOPICS.events, b"682498171943165:")
    assert decode_event(value).user_id == ""


async def test_the_signature_is_checked_on_the_raw_bytes(make_client: MakeClient) -> None:
    """Meta signs its own serialisation (escaped unicode): the same JSON re-serialised differs."""
    publisher = FakePublisher()
    client = await make_client(publisher)
    raw = (
        b'{"object":"page","entry":[{"id":"682498171943165","time":1700000000000,"messaging":'
        b'[{"sender":{"id":"1254459154682919"},"recipient":{"id":"682498171943165"},'
        b'"timestamp":1700000000000,"message":{"mid":"m_u",'
        b'"text":"\\u00e9t\\u00e9 \\ud83c\\udf1e"}}]}]}'
    )
    assert orjson.dumps(orjson.loads(raw)) != raw
    response = await post(client, raw)
    assert response.status == 200
    [(_, _, value)] = publisher.acked
    event = decode_event(value)
    assert isinstance(event, MessageReceived)
    assert event.text == "été 🌞"


async def test_uppercase_hex_signature_is_accepted(make_client: MakeClient) -> None:
    client = await make_client()
    body = fixture("01-quick-reply.json")
    header = "sha256=" + sign(SECRET, body).removeprefix("sha256=").upper()
    response = await post(client, body, {HEADER: header})
    assert response.status == 200


# ---- POST /webhook: refusals ----------------------------------------------------------------


def _tampered(body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = signed(body)
    return body.replace(b"Green", b"Gre3n"), headers


@pytest.mark.parametrize(
    "case",
    ["wrong secret", "missing header", "tampered body", "no sha256= prefix", "sha1 only", "empty"],
)
async def test_a_bad_signature_is_403_and_nothing_is_published(
    make_client: MakeClient, case: str
) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    body = fixture("01-quick-reply.json")
    digest = sign(SECRET, body).removeprefix("sha256=")
    headers = {
        "wrong secret": signed(body, b"another-secret"),
        "missing header": {"Content-Type": "application/json"},
        "no sha256= prefix": {HEADER: digest},
        "sha1 only": {"X-Hub-Signature": "sha1=" + digest[:40]},
        "empty": {HEADER: ""},
    }.get(case)
    if case == "tampered body":
        body, headers = _tampered(body)
    response = await post(client, body, headers)
    assert response.status == 403
    assert publisher.calls == 0
    assert publisher.acked == []


async def test_a_bad_signature_is_refused_before_parsing(make_client: MakeClient) -> None:
    """Unsigned garbage is a 403, not a 400: nothing unauthenticated gets parsed."""
    client = await make_client()
    response = await post(client, b"{not json", {HEADER: "sha256=00"})
    assert response.status == 403


@pytest.mark.parametrize(
    "body",
    [b"{", b"", b"\xff\xfe{}", b"NaN", b'{"object": "page", "entry": [1e999]}', b"[1, 2,]"],
)
async def test_malformed_json_is_400(make_client: MakeClient, body: bytes) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    response = await post(client, body)
    assert response.status == 400
    assert "not JSON" in (await response.json())["detail"]
    assert publisher.calls == 0


@pytest.mark.parametrize(
    "envelope",
    [
        [],
        "page",
        {"entry": []},
        {"object": "whatsapp_business_account", "entry": []},
        {"object": "page"},
        {"object": "page", "entry": {}},
        {"object": "page", "entry": [1]},
    ],
)
async def test_a_wrong_envelope_is_400(make_client: MakeClient, envelope: Any) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    response = await post(client, orjson.dumps(envelope))
    assert response.status == 400
    assert "not a webhook envelope" in (await response.json())["detail"]
    assert publisher.calls == 0


async def test_a_body_over_the_cap_is_413(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher, max_body_bytes=2048)
    element = message_element("m_big", text="x" * 4096)
    body = body_with(element)
    response = await post(client, body)
    assert response.status == 413
    assert publisher.calls == 0
    # Just under the cap is fine.
    small = body_with(message_element("m_small", text="x" * 1024))
    assert len(small) < 2048
    assert (await post(client, small)).status == 200


async def test_a_chunked_body_over_the_cap_is_413(make_client: MakeClient) -> None:
    """No Content-Length to trust: the cap applies while reading."""
    publisher = FakePublisher()
    client = await make_client(publisher, max_body_bytes=2048)
    body = body_with(message_element("m_big", text="x" * 4096))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    response = await client.post("/webhook", data=chunks(), headers=signed(body))
    assert response.status == 413
    assert publisher.calls == 0


async def test_the_default_cap_is_4_mib() -> None:
    from services.common.settings import Settings

    config = IngestConfig.from_settings(Settings.from_env({"WINDOWGATE_DEMO": "1"}))
    assert config.max_body_bytes == 4 * 1024 * 1024


# ---- broker trouble: 503, and nothing of the body counts as accepted -------------------------


@pytest.mark.parametrize("mode", ["down", "slow", "partial"])
async def test_broker_trouble_is_503_and_the_retry_publishes_everything(
    make_client: MakeClient, mode: str
) -> None:
    publisher = FakePublisher(mode)
    client = await make_client(publisher)
    body = fixture("14-batch-two-entries.json")
    started = time.monotonic()
    response = await post(client, body)
    elapsed = time.monotonic() - started
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert elapsed < 4.5  # well within Meta's 5 s, even when the broker hangs
    ingest = client.app[INGEST]
    assert len(ingest.recent_events) == 0 and len(ingest.recent_bodies) == 0

    publisher.mode = "ok"  # the broker is back; Meta retries the same body
    response = await post(client, body)
    assert response.status == 200
    published = publisher.acked[-3:]
    assert published == expected_records(body)  # every event, including one stored before
    assert len(ingest.recent_events) == 3


async def test_healthz_follows_the_broker(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    response = await client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"
    publisher.mode = "down"
    response = await client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["status"] == "unavailable"


async def test_the_app_starts_and_closes_its_publisher(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    assert publisher.started and not publisher.closed
    await client.close()
    assert publisher.closed


# ---- unknown kinds → 200 and a dead letter ----------------------------------------------------


async def test_unknown_kinds_are_200_with_a_dead_letter_each(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    game = {"sender": {"id": USER}, "recipient": {"id": PAGE}, "timestamp": NOW_MS, "game_play": {}}
    change = {"field": "feed", "value": {"item": "comment", "from": {"id": "99"}}}
    body = body_with(message_element("m_ok"), game, changes=[change])
    response = await post(client, body)
    assert response.status == 200
    [event] = publisher.on(TOPICS.events)
    assert decode_event(event[2]).dedup_key == "msg:m_ok"
    letters = publisher.on(TOPICS.dead_letter)
    assert [key for _, key, _ in letters] == [PAGE.encode(), PAGE.encode()]
    records = [orjson.loads(value) for _, _, value in letters]
    assert records[0]["raw"] == game
    assert "game_play" in records[0]["reason"]
    assert records[0]["source"] == {
        "path": "entry[0].messaging[1]",
        "object": "page",
        "page_id": PAGE,
        "user_id": USER,
    }
    assert records[0]["service"] == "ingest" and records[0]["at"] == NOW_MS
    assert records[1]["raw"] == change
    assert "changes" in records[1]["reason"]


async def test_an_unknown_element_without_a_page_is_dead_lettered_without_a_key(
    make_client: MakeClient,
) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    body = orjson.dumps({"object": "page", "entry": [{"time": NOW_MS, "messaging": [{"x": 1}]}]})
    response = await post(client, body)
    assert response.status == 200
    [(topic, key, value)] = publisher.acked
    assert (topic, key) == (TOPICS.dead_letter, None)
    assert "page id" in orjson.loads(value)["reason"]


async def test_dead_letters_are_also_only_accepted_once_acknowledged(
    make_client: MakeClient,
) -> None:
    publisher = FakePublisher("down")
    client = await make_client(publisher)
    body = body_with({"sender": {"id": USER}, "timestamp": NOW_MS, "game_play": {}})
    assert (await post(client, body)).status == 503
    publisher.mode = "ok"
    assert (await post(client, body)).status == 200
    assert len(publisher.on(TOPICS.dead_letter)) == 1


# ---- duplicates: cheap here, harmless downstream ----------------------------------------------


async def test_a_redelivered_body_is_not_produced_again(make_client: MakeClient) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    body = fixture("09-otn-optin.json")
    assert (await post(client, body)).status == 200
    assert (await post(client, body)).status == 200
    assert len(publisher.acked) == 1
    assert publisher.calls == 1


async def test_an_event_seen_in_another_body_is_not_produced_again(
    make_client: MakeClient,
) -> None:
    publisher = FakePublisher()
    client = await make_client(publisher)
    first = body_with(message_element("m_1"))
    again = body_with(message_element("m_1"), message_element("m_2"))  # another batch, same m_1
    assert (await post(client, first)).status == 200
    assert (await post(client, again)).status == 200
    mids = [decode_event(value).dedup_key for _, _, value in publisher.acked]
    assert mids == ["msg:m_1", "msg:m_2"]


async def test_without_the_cache_a_duplicate_is_produced_and_harmless(
    make_client: MakeClient,
) -> None:
    """Correctness never rests on the cache: the same fact twice folds like once (I2)."""
    publisher = FakePublisher()
    client = await make_client(publisher, recent_keys=0)
    body = fixture("09-otn-optin.json")
    assert (await post(client, body)).status == 200
    assert (await post(client, body)).status == 200
    first, second = publisher.acked
    assert first == second  # same key, same bytes, same dedup_key
    event = decode_event(first[2])
    assert event.dedup_key == "otn:otn-token-0001"
    once = fold(empty_state(event), event)
    assert fold(once, decode_event(second[2])) == once


# ---- /metrics and logs ------------------------------------------------------------------------


async def test_metrics_count_requests_events_latency_and_dead_letters(
    make_client: MakeClient,
) -> None:
    publisher = FakePublisher()
    metrics = IngestMetrics()
    client = await make_client(publisher, metrics)
    await post(client, fixture("14-batch-two-entries.json"))
    await post(client, fixture("14-batch-two-entries.json"))
    await post(client, body_with({"sender": {"id": USER}, "timestamp": NOW_MS, "game_play": {}}))
    await post(client, fixture("01-quick-reply.json"), {HEADER: "sha256=00"})
    publisher.mode = "down"
    await post(client, fixture("04-read.json"))
    await client.get("/nowhere")

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    lines = set(text.splitlines())
    for line in (
        'windowgate_ingest_requests_total{endpoint="webhook",status="200"} 3.0',
        'windowgate_ingest_requests_total{endpoint="webhook",status="403"} 1.0',
        'windowgate_ingest_requests_total{endpoint="webhook",status="503"} 1.0',
        'windowgate_ingest_requests_total{endpoint="other",status="404"} 1.0',
        'windowgate_ingest_events_total{kind="message"} 2.0',
        'windowgate_ingest_events_total{kind="postback"} 1.0',
        'windowgate_ingest_dead_letters_total{cause="unsupported"} 1.0',
        'windowgate_ingest_duplicates_skipped_total{level="body"} 1.0',
        'windowgate_ingest_publish_seconds_count{outcome="acked"} 2.0',
        'windowgate_ingest_publish_seconds_count{outcome="failed"} 1.0',
    ):
        assert line in lines, line


async def test_each_app_has_its_own_registry(make_client: MakeClient) -> None:
    one, two = await make_client(), await make_client()
    await post(one, fixture("01-quick-reply.json"))
    text = await (await two.get("/metrics")).text()
    assert 'windowgate_ingest_events_total{kind="message"}' not in text


async def test_logs_are_json_and_carry_no_secrets(make_client: MakeClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("ingest"))
    logger = logging.getLogger("services.ingest")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        client = await make_client(FakePublisher("down"))
        body = fixture("01-quick-reply.json")
        good = sign(SECRET, body)
        await post(client, body)  # 503
        await post(client, body, {HEADER: good[:-4] + "0000"})  # 403
        await post(client, b"{", signed(b"{"))  # 400
        await client.get("/webhook", params={"hub.mode": "subscribe", "hub.verify_token": "guess"})
        await client.get(
            "/webhook",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": VERIFY_TOKEN,
                "hub.challenge": "7",
            },
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    output = stream.getvalue()
    entries = [orjson.loads(line) for line in output.splitlines()]
    assert {e.get("status") for e in entries} >= {503, 403, 400}
    for secret in (SECRET.decode(), VERIFY_TOKEN, "guess", good.removeprefix("sha256="), "Green"):
        assert secret not in output
