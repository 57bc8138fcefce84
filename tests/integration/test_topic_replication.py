"""Every topic the services create follows WINDOWGATE_REPLICATION_FACTOR and its min ISR."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devtools.devbroker import unique_name
from schemas.topics import Topics
from services.common.topics import TopicLayoutError, ensure_topics
from services.dispatcher.delivery.dispatchlog import ensure_log_topic

pytestmark = pytest.mark.integration


async def _describe(bootstrap: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per topic: its replication (replicas of each partition) and its explicit configs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = {t["topic"]: t for t in await admin.describe_topics(names)}
        answers = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    described: dict[str, dict[str, Any]] = {}
    for answer in answers:
        for _code, _message, _type, name, entries in answer.resources:
            described[name] = {
                "replicas": {len(p["replicas"]) for p in topics[name]["partitions"]},
                "configs": {entry[0]: entry[1] for entry in entries},
            }
    return described


async def test_service_topics_and_the_dispatch_log_get_min_insync(kafka_bootstrap: str) -> None:
    topics = Topics(unique_name("repl") + ".")
    log_topic = f"{topics.prefix}dispatch-log"
    await ensure_topics(kafka_bootstrap, topics, 2, replication=1)
    await ensure_log_topic(kafka_bootstrap, log_topic, 2, 3_600_000, replication=1)
    names = [*topics.keyed, topics.dead_letter, log_topic]
    described = await _describe(kafka_bootstrap, names)
    for name in names:
        assert described[name]["replicas"] == {1}, name
        assert described[name]["configs"]["min.insync.replicas"] == "1", name
    assert described[log_topic]["configs"]["cleanup.policy"] == "compact,delete"


async def test_the_setting_is_read_when_not_given(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single-node broker cannot hold 2 copies: the error names the variable, nothing is made."""
    monkeypatch.setenv("WINDOWGATE_REPLICATION_FACTOR", "2")
    topics = Topics(unique_name("repl2") + ".")
    with pytest.raises(TopicLayoutError, match=r"replication factor 2 \(WINDOWGATE_REPLICATION_"):
        await ensure_topics(kafka_bootstrap, topics, 1)
    with pytest.raises(TopicLayoutError, match="replication factor 2"):
        await ensure_log_topic(kafka_bootstrap, f"{topics.prefix}dispatch-log", 1, 3_600_000)
