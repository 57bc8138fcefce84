"""Shared fixtures: a real Kafka broker for the integration tests, and topic helpers.

``kafka_bootstrap`` (session) is a "host:port" string, from the first of:

1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (e.g. after ``make broker``: ``127.0.0.1:9092``);
2. an ``apache/kafka`` container via testcontainers, when a Docker engine answers
   (skip this with ``WINDOWGATE_TEST_BROKER=local``);
3. ``devtools.devbroker.LocalKafka``: Kafka from Maven Central jars on free ports, stopped at
   the end of the session (needs Java 17+, and Maven for the first jar fetch).

A broker that cannot be had fails the tests that need it (never skips), in CI and outside it.
``WINDOWGATE_KAFKA_TIMEOUT`` (seconds, default 90) bounds the wait for the broker to answer.
Tests that use ``kafka_bootstrap`` get the ``integration`` marker automatically
(``pytest -m "not integration"`` deselects them).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from urllib.parse import urlparse

import pytest

from devtools.devbroker import (
    DEFAULT_READY_TIMEOUT_S,
    LocalKafka,
    create_topics,
    free_port,
    unique_name,
    wait_ready,
)

KAFKA_IMAGE = "apache/kafka:4.1.2"
BROKER_TIMEOUT_S = float(os.environ.get("WINDOWGATE_KAFKA_TIMEOUT", DEFAULT_READY_TIMEOUT_S))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def _docker_answers() -> bool:
    if os.environ.get("WINDOWGATE_TEST_BROKER", "").lower() == "local":
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no client library, no socket, no daemon, timeout: no Docker
        return False


@contextlib.contextmanager
def _docker_kafka() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer

    docker_host = urlparse(os.environ.get("DOCKER_HOST", ""))
    host = os.environ.get("TC_HOST") or (
        docker_host.hostname
        if docker_host.scheme == "tcp" and docker_host.hostname
        else "localhost"
    )
    port = free_port()
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{port}",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
            KAFKA_AUTO_CREATE_TOPICS_ENABLE="true",
            KAFKA_NUM_PARTITIONS="1",
        )
    )
    container.start()
    try:
        bootstrap = f"{host}:{port}"
        wait_ready(bootstrap, timeout_s=BROKER_TIMEOUT_S)
        yield bootstrap
    finally:
        container.stop()


@contextlib.contextmanager
def _local_kafka() -> Iterator[str]:
    kafka = LocalKafka(ready_timeout_s=BROKER_TIMEOUT_S)
    kafka.start()
    print(
        f"\nkafka_bootstrap: local Kafka at {kafka.bootstrap}, ready {kafka.startup_s:.1f} s "
        "after process start",
        file=sys.stderr,
    )
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """ "host:port" of a real Kafka broker for the whole session (see the module docstring)."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    stack = contextlib.ExitStack()
    started = time.monotonic()
    bootstrap = ""
    error: Exception | None = None
    try:
        if given:
            wait_ready(given.split(",")[0].strip(), timeout_s=min(30.0, BROKER_TIMEOUT_S))
            bootstrap = given
        elif _docker_answers():
            bootstrap = stack.enter_context(_docker_kafka())
        else:
            bootstrap = stack.enter_context(_local_kafka())
    except Exception as exc:  # BrokerError, docker errors, ...
        error = exc
    if error is not None:
        stack.close()
        where = "in CI" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "here"
        hint = (
            f"KAFKA_BOOTSTRAP_SERVERS={given} does not answer"
            if given
            else "install Java 17+ and Maven (first jar fetch), or run `make broker` and set "
            "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092"
        )
        pytest.fail(
            f"no Kafka broker for the integration tests {where} "
            f"(after {time.monotonic() - started:.0f} s): {hint}\n"
            f"{type(error).__name__}: {error}",
            pytrace=False,
        )
    with stack:
        yield bootstrap


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A fresh topic name for this test (not created: the broker auto-creates on first use)."""
    return unique_name(request.node.name)


@pytest.fixture
def make_topic(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Callable[..., Awaitable[str]]:
    """``name = await make_topic(partitions=3)``: create a fresh topic, wait for its leaders."""

    async def make(
        partitions: int = 1,
        *,
        prefix: str | None = None,
        configs: Mapping[str, str] | None = None,
    ) -> str:
        name = unique_name(prefix or request.node.name)
        await create_topics(kafka_bootstrap, [name], partitions=partitions, configs=configs)
        return name

    return make
