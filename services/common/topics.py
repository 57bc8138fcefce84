"""Topic names and their creation: every keyed topic gets the same partition count (DESIGN §2)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """A keyed topic exists with another partition count: one user's records would not co-locate."""


@dataclass(frozen=True)
class Topics:
    prefix: str = "windowgate."

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def send_requests(self) -> str:
        return f"{self.prefix}send-requests"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}decisions"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    @property
    def keyed(self) -> tuple[str, ...]:
        return (self.events, self.send_requests, self.decisions)


_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    bootstrap: str, topics: Topics, partitions: int, replication: int = 1, timeout_s: float = 30.0
) -> None:
    """Create missing topics; refuse keyed topics with another partition count."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        wanted = [*topics.keyed, topics.dead_letter]
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication) for name in wanted],
            timeout_ms=int(timeout_s * 1000),
        )
        for name, code, *_ in response.topic_errors:
            if code == 0:
                log.info("created topic %s with %d partitions", name, partitions)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise TopicLayoutError(f"could not create topic {name}: Kafka error code {code}")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            described = {t["topic"]: t for t in await admin.describe_topics(list(topics.keyed))}
            for name in topics.keyed:
                count = len(described.get(name, {}).get("partitions", []))
                if count and count != partitions:
                    raise TopicLayoutError(
                        f"topic {name} has {count} partitions, expected {partitions} "
                        "(WINDOWGATE_PARTITIONS): every keyed topic must have the same count"
                    )
            led = all(
                len(described.get(n, {}).get("partitions", [])) == partitions
                and all(p.get("leader", -1) >= 0 for p in described[n]["partitions"])
                for n in topics.keyed
            )
            if led:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TopicLayoutError(f"topics {list(topics.keyed)} have no leaders yet")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
