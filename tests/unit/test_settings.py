"""Settings from the environment: defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from services.common.settings import Settings, SettingsError


def test_defaults_match_the_readme_table() -> None:
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.topic_prefix == "windowgate."
    assert settings.partitions == 8
    assert (settings.ingest_port, settings.window_port, settings.dispatcher_port) == (
        8080,
        8081,
        8082,
    )
    assert settings.graph_api_url == "https://graph.facebook.com"
    assert settings.graph_api_version == "v25.0"
    assert settings.api_tokens == ()
    assert settings.app_secret is None and settings.verify_token is None
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert not settings.demo


def test_values_are_read_and_cleaned() -> None:
    settings = Settings.from_env(
        {
            "WINDOWGATE_PARTITIONS": "3",
            "WINDOWGATE_API_TOKENS": " a, b ,,",
            "GRAPH_API_URL": "http://127.0.0.1:8090/",
            "WINDOWGATE_DEMO": "yes",
            "INGEST_PUBLISH_TIMEOUT_S": "1.5",
        }
    )
    assert settings.partitions == 3
    assert settings.api_tokens == ("a", "b")
    assert settings.graph_api_url == "http://127.0.0.1:8090"
    assert settings.demo
    assert settings.publish_timeout_s == 1.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WINDOWGATE_PARTITIONS": "eight"}, "WINDOWGATE_PARTITIONS must be a whole number"),
        ({"WINDOWGATE_PARTITIONS": "0"}, "WINDOWGATE_PARTITIONS must be between 1 and 10000"),
        ({"INGEST_PORT": "70000"}, "INGEST_PORT must be between 0 and 65535"),
        ({"INGEST_PUBLISH_TIMEOUT_S": "soon"}, "INGEST_PUBLISH_TIMEOUT_S must be a number"),
        ({"INGEST_PUBLISH_TIMEOUT_S": "0"}, "INGEST_PUBLISH_TIMEOUT_S must be positive"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
