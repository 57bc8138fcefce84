"""The dispatcher's settings: defaults, overrides, and clear errors for bad values."""

from __future__ import annotations

import pytest

from services.common.settings import Settings, SettingsError
from services.dispatcher.config import DispatcherConfig


def config(**env: str) -> DispatcherConfig:
    return DispatcherConfig.from_settings(Settings.from_env(env))


def test_defaults() -> None:
    c = config()
    assert (c.rate_text, c.rate_media) == (300.0, 10.0)
    assert c.group == "windowgate.dispatcher"
    assert c.dispatch_log == "windowgate.dispatch-log"
    assert c.port == 8082 and c.role == "all" and c.crash_at is None
    assert c.graph_url == "https://graph.facebook.com" and c.graph_version == "v25.0"


def test_overrides() -> None:
    c = config(
        WINDOWGATE_TOPIC_PREFIX="t.",
        DISPATCHER_RATE_TEXT="50",
        DISPATCHER_CRASH_AT="after_call",
        DISPATCHER_CRASH_REQUEST="r9",
        DISPATCHER_TOKEN_INDEX="0",
        DISPATCHER_ROLE="worker",
        GRAPH_API_URL="http://127.0.0.1:9/",
    )
    assert c.group == "t.dispatcher" and c.rate_text == 50.0
    assert (c.crash_at, c.crash_request) == ("after_call", "r9")
    assert not c.token_index and c.role == "worker"
    assert c.graph_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("DISPATCHER_RATE_TEXT", "fast", "must be a number"),
        ("DISPATCHER_RATE_TEXT", "0", "between"),
        ("DISPATCHER_BATCH", "2.5", "whole number"),
        ("DISPATCHER_CRASH_AT", "before_lunch", "after_attempt"),
        ("DISPATCHER_ROLE", "boss", "all, worker or api"),
        ("DISPATCHER_TOKEN_INDEX", "maybe", "1 or 0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        config(**{name: value})
    assert name in str(caught.value) and words in str(caught.value)
