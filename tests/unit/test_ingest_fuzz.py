"""Fuzzing the webhook: random and mutated bodies, signed or not, never a 500, never a crash.

Whatever the body, the answer is one of the statuses of DESIGN §4.3, and a 200 means exactly the
body's events (by `normalise`) plus one dead letter per element it could not read were published.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st

from services.ingest.app import ACCEPTED
from services.ingest.signature import HEADER
from tests.unit.test_ingest_app import (
    TOPICS,
    FakePublisher,
    all_fixtures,
    expected_records,
    post,
    signed,
    start_client,
)
from windowgate.meta.normalise import EnvelopeError, Normalised, normalise

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CAP = 16 * 1024

META_KEYS = (
    "object", "entry", "id", "time", "messaging", "standby", "changes", "sender", "recipient",
    "timestamp", "message", "mid", "text", "is_echo", "is_deleted", "postback", "payload",
    "reaction", "action", "optin", "type", "one_time_notif_token", "notification_messages_token",
    "notification_messages_status", "token_expiry_timestamp", "read", "delivery", "watermark",
    "referral", "source", "ref", "message_edit", "policy-enforcement", "pass_thread_control",
    "field", "value", "quick_reply", "attachments",
)  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["page", "instagram", "subscribe", "react", "block", "one_time_notif_req"])
)
keys = st.sampled_from(META_KEYS) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def _fixture_bodies() -> list[Any]:
    return [orjson.loads(path.read_bytes()) for path in all_fixtures()]


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every node of a JSON value (the root is ())."""
    found = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _nodes(v, (*path, i))
    return found


def _parent(root: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        root = root[step]
    return root


@st.composite
def mutated_fixtures(draw: st.DrawFn) -> bytes:
    """A fixture with a few nodes replaced, deleted or duplicated."""
    body = copy.deepcopy(draw(st.sampled_from(_fixture_bodies())))
    for _ in range(draw(st.integers(1, 4))):
        nodes = _nodes(body)
        path = draw(st.sampled_from(nodes))
        if not path:
            body = draw(json_values)
            continue
        parent, last = _parent(body, path), path[-1]
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        else:
            parent[draw(keys)] = copy.deepcopy(parent[last])
    return json.dumps(body).encode()  # escaped unicode, like Meta; ints beyond 64 bits too


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    """A fixture's bytes with a few bytes flipped, inserted or cut."""
    raw = bytearray(draw(st.sampled_from(all_fixtures())).read_bytes())
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(raw) - 1))
        action = draw(st.sampled_from(["flip", "insert", "cut"]))
        if action == "flip":
            raw[at] = draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at : at + draw(st.integers(1, 16))]
    return bytes(raw)


def _envelope(body: bytes) -> Normalised | None:
    try:
        return normalise(orjson.loads(body))
    except (orjson.JSONDecodeError, EnvelopeError):
        return None


async def _check(body: bytes, sign: bool, mode: str = "ok") -> None:
    """One request on a fresh app (fresh caches); the answer and what was published agree."""
    publisher = FakePublisher(mode)
    client = await start_client(publisher, max_body_bytes=CAP, publish_timeout_s=0.01)
    try:
        headers = signed(body) if sign else {HEADER: "sha256=" + "0" * 64}
        response = await post(client, body, headers)
        status = response.status
        event(f"HTTP {status}")
        allowed = {200, 400, 413, 503} if sign else {403, 413}
        assert status in allowed, (status, await response.text(), body[:300])
        normalised = _envelope(body) if sign and len(body) <= CAP else None
        if status in (400, 403, 413):
            assert publisher.calls == 0
            assert normalised is None
            return
        assert normalised is not None  # 200 or 503: a signed, readable envelope
        if status == 503:
            assert mode != "ok"
            return
        assert await response.text() == ACCEPTED
        assert publisher.on(TOPICS.events) == expected_records(body)
        assert len(publisher.on(TOPICS.dead_letter)) == len(normalised.unsupported)
    finally:
        await client.close()


@FUZZ
@given(body=st.binary(max_size=2048), sign=st.booleans())
async def test_random_bytes(body: bytes, sign: bool) -> None:
    await _check(body, sign)


@FUZZ
@given(value=json_values)
async def test_random_json(value: Any) -> None:
    await _check(json.dumps(value).encode(), sign=True)


@FUZZ
@given(body=mutated_fixtures(), sign=st.booleans())
async def test_mutated_fixtures(body: bytes, sign: bool) -> None:
    await _check(body, sign)


@FUZZ
@given(body=byte_mutations(), mode=st.sampled_from(["ok", "down", "slow", "partial"]))
async def test_byte_mutations_with_a_flaky_broker(body: bytes, mode: str) -> None:
    await _check(body, sign=True, mode=mode)


def test_mutated_fixtures_reach_the_parsers() -> None:
    """Guard against a fuzzer that only ever makes 400s: mutations can keep a body readable,
    with events and with unsupported elements."""
    with_events = find(mutated_fixtures(), lambda b: bool((n := _envelope(b)) and n.events))
    assert _envelope(with_events) is not None
    odd = find(mutated_fixtures(), lambda b: bool((n := _envelope(b)) and n.unsupported))
    assert _envelope(odd) is not None
