"""Ingest's settings: refuses to start without Meta's credentials, except in demo mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.settings import Settings
from services.ingest.config import (
    DEFAULT_RECENT_KEYS,
    DEMO_APP_SECRET,
    DEMO_VERIFY_TOKEN,
    ConfigError,
    IngestConfig,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {"META_APP_SECRET": "s3cret-value", "META_VERIFY_TOKEN": "v3rify-value"}


def config(**env: str) -> IngestConfig:
    return IngestConfig.from_settings(Settings.from_env(env))


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, "META_APP_SECRET and META_VERIFY_TOKEN"),
        ({"META_VERIFY_TOKEN": "v"}, "META_APP_SECRET"),
        ({"META_APP_SECRET": "s"}, "META_VERIFY_TOKEN"),
        ({"META_APP_SECRET": "", "META_VERIFY_TOKEN": "v"}, "META_APP_SECRET"),
    ],
)
def test_refuses_without_the_app_secret_or_verify_token(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError, match=f"ingest needs {missing}:"):
        config(**env)


def test_credentials_and_defaults() -> None:
    cfg = config(**CREDENTIALS)
    assert cfg.app_secret == b"s3cret-value"
    assert cfg.verify_token == "v3rify-value"
    assert cfg.max_body_bytes == 4 * 1024 * 1024
    assert cfg.publish_timeout_s == 3.0
    assert cfg.recent_keys == DEFAULT_RECENT_KEYS
    assert (cfg.host, cfg.port, cfg.demo) == ("0.0.0.0", 8080, False)


def test_demo_mode_uses_the_documented_demo_credentials() -> None:
    cfg = config(WINDOWGATE_DEMO="1")
    assert cfg.demo
    assert cfg.app_secret == DEMO_APP_SECRET.encode()
    assert cfg.verify_token == DEMO_VERIFY_TOKEN


def test_demo_mode_keeps_configured_credentials() -> None:
    cfg = config(WINDOWGATE_DEMO="true", **CREDENTIALS)
    assert cfg.app_secret == b"s3cret-value"
    assert cfg.verify_token == "v3rify-value"


def test_env_overrides() -> None:
    cfg = config(
        INGEST_MAX_BODY_BYTES="65536",
        INGEST_PUBLISH_TIMEOUT_S="1.5",
        INGEST_RECENT_KEYS="0",
        INGEST_HOST="127.0.0.1",
        INGEST_PORT="9000",
        **CREDENTIALS,
    )
    assert (cfg.max_body_bytes, cfg.publish_timeout_s, cfg.recent_keys) == (65536, 1.5, 0)
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9000)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INGEST_RECENT_KEYS": "lots"}, "INGEST_RECENT_KEYS must be a whole number"),
        ({"INGEST_RECENT_KEYS": "-1"}, "INGEST_RECENT_KEYS must be 0"),
        ({"INGEST_PUBLISH_TIMEOUT_S": "5"}, "under 5 s"),
    ],
)
def test_unusable_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**env, **CREDENTIALS)


def test_the_repr_shows_no_secret() -> None:
    text = repr(config(**CREDENTIALS))
    assert "s3cret" not in text and "v3rify" not in text
    assert "max_body_bytes=4194304" in text


def test_the_service_refuses_to_start_with_a_clear_message() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("META_", "WINDOWGATE_DEMO"))}
    result = subprocess.run(
        [sys.executable, "-m", "services.ingest"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "META_APP_SECRET and META_VERIFY_TOKEN" in result.stderr
    assert "WINDOWGATE_DEMO=1" in result.stderr
