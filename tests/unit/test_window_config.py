"""The window worker's settings, and the consumer that rewinds never-committed partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from services.common.settings import Settings, SettingsError
from services.window.__main__ import main
from services.window.app import RewindingConsumer
from services.window.config import WindowConfig


def config(**env: str) -> WindowConfig:
    return WindowConfig.from_settings(Settings.from_env(env))


def test_defaults_follow_the_shared_settings() -> None:
    c = config(WINDOWGATE_TOPIC_PREFIX="acme.", WINDOW_PORT="9001")
    assert c.store == "rocksdb://"
    assert c.app_id == "acme.window"
    assert c.users_changelog == "acme.window-users-changelog"
    assert c.pages_changelog == "acme.window-pages-changelog"
    assert c.advertised_url.endswith(":9001")
    assert c.data_dir == Path(".windowgate/window")
    assert (c.standby_replicas, c.replication_factor, c.session_timeout_s) == (1, 1, 10.0)


def test_every_window_variable_is_read() -> None:
    c = config(
        WINDOW_STORE="memory://",
        WINDOW_DATA_DIR="/var/lib/window",
        WINDOW_APP_ID="w",
        WINDOW_HOST="127.0.0.1",
        WINDOW_ADVERTISED_URL="http://w1:8081/",
        WINDOW_STANDBY_REPLICAS="0",
        WINDOWGATE_REPLICATION_FACTOR="3",
        WINDOW_REACH_FLUSH_S="2",
        WINDOW_SESSION_TIMEOUT_S="6",
        WINDOW_LOG_LEVEL="debug",
    )
    assert (c.store, c.data_dir, c.app_id, c.host) == (
        "memory://",
        Path("/var/lib/window"),
        "w",
        "127.0.0.1",
    )
    assert c.advertised_url == "http://w1:8081"
    assert (c.standby_replicas, c.replication_factor, c.reach_flush_s) == (0, 3, 2.0)
    assert (c.session_timeout_s, c.log_level) == (6.0, "DEBUG")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WINDOW_STORE", "redis://", "WINDOW_STORE must be one of rocksdb://, memory://"),
        ("WINDOW_STANDBY_REPLICAS", "-1", "WINDOW_STANDBY_REPLICAS must be at least 0"),
        (
            "WINDOWGATE_REPLICATION_FACTOR",
            "two",
            "WINDOWGATE_REPLICATION_FACTOR must be a whole number",
        ),
        (
            "WINDOW_REPLICATION_FACTOR",
            "3",
            "WINDOW_REPLICATION_FACTOR is replaced by WINDOWGATE_REPLICATION_FACTOR",
        ),
        ("WINDOW_REACH_FLUSH_S", "0", "WINDOW_REACH_FLUSH_S must be positive"),
        ("WINDOW_SESSION_TIMEOUT_S", "soon", "WINDOW_SESSION_TIMEOUT_S must be a number"),
    ],
)
def test_bad_values_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        config(**{name: value})


def test_the_command_line_says_how_to_use_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["serve"]) == 2
    assert "usage: python -m services.window {worker | replay" in capsys.readouterr().err


class FakeThread:
    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.rewound: list[TopicPartition] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        return self.committed

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.rewound += partitions


async def test_never_committed_source_partitions_are_rewound_to_their_start() -> None:
    consumer: Any = object.__new__(
        type("Consumer", (RewindingConsumer,), {"rewind_topics": frozenset({"x.events"})})
    )
    committed = {
        TopicPartition("x.events", 0): 41,  # committed: aiokafka has seeked it
        TopicPartition("x.events", 1): None,  # never committed: must start over
        TopicPartition("x.events", 2): 0,  # aiokafka skips 0 as well
        TopicPartition("x-users-changelog", 1): None,  # not a source: recovery owns it
    }
    consumer._thread = FakeThread(committed)
    assert await consumer.seek_to_committed() == committed
    assert consumer._thread.rewound == [
        TopicPartition("x.events", 1),
        TopicPartition("x.events", 2),
    ]
