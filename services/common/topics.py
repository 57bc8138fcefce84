"""Topic names and their creation: every keyed topic gets the same partition count (DESIGN §2).

Every topic the services create takes its replication factor from one setting,
WINDOWGATE_REPLICATION_FACTOR (default 1), with `min.insync.replicas` = min(2, rf)
(`services.common.settings.min_insync_replicas`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from schemas.topics import Topics
from services.common.settings import REPLICATION_VARIABLE, min_insync_replicas, replication_from_env

log = logging.getLogger(__name__)


class TopicLayoutError(RuntimeError):
    """A keyed topic exists with another partition count: one user's records would not co-locate."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic to create: `keyed` topics must have exactly the partition count asked for."""

    name: str
    keyed: bool = True
    configs: Mapping[str, str] = field(default_factory=dict)
    why_keyed: str = "every keyed topic must have the same count"


_TOPIC_ALREADY_EXISTS = 36
_INVALID_REPLICATION_FACTOR = 38


def replication_configs(replication: int) -> dict[str, str]:
    """The topic configs that go with a replication factor (`min.insync.replicas`)."""
    return {"min.insync.replicas": str(min_insync_replicas(replication))}


def _creation_error(name: str, code: int, replication: int) -> TopicLayoutError:
    if code == _INVALID_REPLICATION_FACTOR:
        return TopicLayoutError(
            f"could not create topic {name}: replication factor {replication} "
            f"({REPLICATION_VARIABLE}) is more than the brokers in the cluster"
        )
    return TopicLayoutError(f"could not create topic {name}: {for_code(code).__name__} ({code})")


async def ensure_topic_specs(
    bootstrap: str,
    specs: Sequence[TopicSpec],
    partitions: int,
    replication: int | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create missing topics (replication from WINDOWGATE_REPLICATION_FACTOR unless given) and
    wait for their leaders; refuse keyed topics that exist with another partition count."""
    rf = replication_from_env() if replication is None else replication
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(
                    spec.name,
                    partitions,
                    rf,
                    topic_configs={**replication_configs(rf), **spec.configs},
                )
                for spec in specs
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        for name, code, *_ in response.topic_errors:
            if code == 0:
                log.info("created topic %s: %d partitions, replication %d", name, partitions, rf)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise _creation_error(name, code, rf)
        await _wait_for_leaders(admin, specs, partitions, rf, timeout_s)
    finally:
        await admin.close()


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient,
    specs: Sequence[TopicSpec],
    partitions: int,
    replication: int,
    timeout_s: float,
) -> None:
    names = [spec.name for spec in specs]
    deadline = asyncio.get_running_loop().time() + timeout_s
    warned = False
    while True:
        answer = await admin.describe_topics(names)
        described = {t["topic"]: t.get("partitions", []) for t in answer}
        for spec in specs:
            count = len(described.get(spec.name, []))
            if spec.keyed and count and count != partitions:
                raise TopicLayoutError(
                    f"topic {spec.name} has {count} partitions, expected {partitions} "
                    f"(WINDOWGATE_PARTITIONS): {spec.why_keyed}"
                )
        if not warned:
            warned = True
            for name, parts in described.items():
                have = min((len(p.get("replicas", ())) for p in parts), default=replication)
                if have < replication:
                    log.warning(
                        "topic %s exists with replication %d, below %s=%d: raise it with "
                        "kafka-reassign-partitions",
                        name,
                        have,
                        REPLICATION_VARIABLE,
                        replication,
                    )
        led = all(
            (len(described.get(spec.name, [])) == partitions or not spec.keyed)
            and described.get(spec.name)
            and all(p.get("leader", -1) >= 0 for p in described[spec.name])
            for spec in specs
        )
        if led:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TopicLayoutError(f"topics {names} have no leaders after {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


async def ensure_topics(
    bootstrap: str,
    topics: Topics,
    partitions: int,
    replication: int | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the keyed topics and the dead-letter topic; see `ensure_topic_specs`."""
    specs = [TopicSpec(name) for name in topics.keyed]
    specs.append(TopicSpec(topics.dead_letter, keyed=False))
    await ensure_topic_specs(bootstrap, specs, partitions, replication, timeout_s)
