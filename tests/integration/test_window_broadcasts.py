"""A broadcast through the real broker: the window workers fan it out, one frozen mid-fan-out.

~200 users hold one OTN token each on a topic; the commands are written with a plain producer to
every partition of `<prefix>broadcast-commands` (as the HTTP front will). The first worker SIGSTOPs
itself once a slice has decided a chosen recipient, before that slice's transaction; a second worker
takes every partition after the first's session expires and finishes the fan-out; the first wakes
up fenced. The decisions topic (read_committed) then holds exactly one decision per recipient and
no token is granted twice; the progress topic sums to the audience.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.broadcast import (
    Audience,
    BroadcastCommand,
    BroadcastProgress,
    BroadcastSpec,
    CommandKind,
    decode_progress,
    encode_command,
    recipient_request_id,
)
from schemas.codec import to_wire
from schemas.events import OtnOptin
from services.common.runtime import now_ms
from tests.integration.test_window_worker import (  # noqa: F401  (gateway: the fixture)
    PAGE,
    PARTITIONS,
    Gateway,
    _stopped,
    eventually,
    gateway,
    read_decisions,
    user,
)
from windowgate.core.timeconst import HOUR_MS

pytestmark = pytest.mark.integration

USERS = range(200)
SPEC = BroadcastSpec(
    broadcast_id="bc-restock",
    page_id=PAGE,
    message={"text": "back in stock"},
    audience=Audience(topic="restock"),
)


async def send_command(gw: Gateway, kind: CommandKind) -> None:
    """One command to every partition (key: the broadcast id), as the front writes it."""
    spec = SPEC if kind == "create" else None
    command = BroadcastCommand(
        kind=kind, broadcast_id=SPEC.broadcast_id, page_id=PAGE, at=now_ms(), spec=spec
    )
    for partition in range(PARTITIONS):
        await gw.producer.send(
            gw.topics.broadcast_commands,
            key=SPEC.broadcast_id.encode(),
            value=encode_command(command),
            partition=partition,
        )
    await gw.producer.flush()


async def read_progress(gw: Gateway) -> dict[bytes, BroadcastProgress]:
    """The latest progress per `<broadcast_id>:<partition>` (read_committed)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=gw.bootstrap, group_id=None, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        topic = gw.topics.broadcasts
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        latest: dict[bytes, BroadcastProgress] = {}
        for tp in partitions:
            while await consumer.position(tp) < ends[tp]:
                for message in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    if message.key is not None and message.value is not None:
                        latest[message.key] = decode_progress(message.value)
        return latest
    finally:
        await consumer.stop()


async def test_a_broadcast_survives_a_worker_frozen_mid_fan_out(
    gateway: Gateway,  # noqa: F811  (the fixture)
) -> None:
    now = now_ms()
    frozen_at = recipient_request_id(SPEC.broadcast_id, user(120))
    w1 = gateway.worker(
        "w1", env={"WINDOW_FREEZE_AT_REQUEST": frozen_at, "WINDOW_BROADCAST_SLICE": "7"}
    )
    await w1.wait_ready()
    await gateway.send_events(
        OtnOptin(
            page_id=PAGE,
            user_id=user(n),
            timestamp=now - 30 * HOUR_MS,  # the window closed long ago: the token it is
            token=f"tok-{n}",
            topic="restock",
        )
        for n in USERS
    )

    async def all_holders_indexed() -> dict[str, Any] | None:
        status, body = await dry_run(w1.url, w1.token, SPEC)
        done = status == 200 and body["complete"] and body["audience"] == len(USERS)
        return body if done else None

    dry = await eventually(all_holders_indexed, "the dry run sees every holder", [w1])
    assert dry["by_mechanism"] == {"OTN": len(USERS)} and dry["refused"] == {}

    await send_command(gateway, "create")
    await send_command(gateway, "create")  # resubmitted: never a second fan-out

    async def frozen() -> bool:
        return _stopped(w1)

    await eventually(frozen, "w1 frozen mid-fan-out", [w1])

    w2 = gateway.worker("w2", env={"WINDOW_BROADCAST_SLICE": "7"})

    async def all_done() -> dict[bytes, BroadcastProgress] | None:
        progress = await read_progress(gateway)
        mine = [p for p in progress.values() if p.broadcast_id == SPEC.broadcast_id]
        finished = len(mine) == PARTITIONS and all(p.status == "done" for p in mine)
        return progress if finished else None

    progress = await eventually(all_done, "w2 finishes the fan-out", [w2], 120)
    assert w1.proc is not None
    w1.proc.send_signal(signal.SIGCONT)  # wakes fenced: its slice was never committed
    await asyncio.sleep(3)

    decisions = await read_decisions(gateway.bootstrap, gateway.topics.decisions)
    mine = [d for d in decisions if d.request_id.startswith(f"bc:{SPEC.broadcast_id}:")]
    per_recipient = Counter(d.request_id for d in mine)
    assert set(per_recipient) == {recipient_request_id(SPEC.broadcast_id, user(n)) for n in USERS}
    assert set(per_recipient.values()) == {1}  # exactly one decision per recipient
    tokens = Counter(d.token for d in mine)
    assert len(tokens) == len(USERS) and set(tokens.values()) == {1}  # no token twice
    assert all(d.allowed and d.mechanism == "OTN" for d in mine)
    parts = [p for p in progress.values() if p.broadcast_id == SPEC.broadcast_id]
    assert sum(p.decided for p in parts) == len(USERS)
    assert sum(p.by_mechanism.get("OTN", 0) for p in parts) == len(USERS)


async def dry_run(url: str, token: str, spec: BroadcastSpec) -> tuple[int, Any]:
    """The window's dry-run endpoint, as the front will call it (body: the spec's wire form)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.post(
            f"{url}/v1/internal/broadcasts/dry-run", json=to_wire(spec), headers=headers
        ) as answer,
    ):
        return answer.status, await answer.json()
