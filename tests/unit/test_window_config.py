"""The window worker's settings."""

from __future__ import annotations

import pytest

from services.common.settings import Settings, SettingsError
from services.window.__main__ import main
from services.window.config import WindowConfig


def config(**env: str) -> WindowConfig:
    return WindowConfig.from_settings(Settings.from_env(env))


def test_defaults_follow_the_shared_settings() -> None:
    c = config(WINDOWGATE_TOPIC_PREFIX="acme.", WINDOW_PORT="9001")
    assert c.app_id == "acme.window"
    assert c.users_changelog == "acme.window-users-changelog"
    assert c.pages_changelog == "acme.window-pages-changelog"
    assert c.advertised_url.endswith(":9001")
    assert (c.replication_factor, c.batch, c.session_timeout_s) == (1, 1000, 10.0)


def test_every_window_variable_is_read() -> None:
    c = config(
        WINDOW_APP_ID="w",
        WINDOW_HOST="127.0.0.1",
        WINDOW_ADVERTISED_URL="http://w1:8081/",
        WINDOW_BATCH="50",
        WINDOWGATE_REPLICATION_FACTOR="3",
        WINDOW_REACH_FLUSH_S="2",
        WINDOW_SESSION_TIMEOUT_S="6",
        WINDOW_LOG_LEVEL="debug",
    )
    assert (c.app_id, c.host) == ("w", "127.0.0.1")
    assert c.advertised_url == "http://w1:8081"
    assert (c.batch, c.replication_factor, c.reach_flush_s) == (50, 3, 2.0)
    assert (c.session_timeout_s, c.log_level) == (6.0, "DEBUG")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WINDOW_BATCH", "0", "WINDOW_BATCH must be at least 1"),
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
