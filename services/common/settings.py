"""Settings from the environment (README, Configuration): one table, safe defaults, clear errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class SettingsError(ValueError):
    """A variable is set to something unusable; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, low: int = 1, high: int = 65535) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from exc
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "windowgate."
    partitions: int = 8
    app_secret: str | None = None
    verify_token: str | None = None
    graph_api_url: str = "https://graph.facebook.com"
    graph_api_version: str = "v25.0"
    pages_path: str | None = None
    rules_path: str | None = None
    api_tokens: tuple[str, ...] = ()
    ingest_port: int = 8080
    window_port: int = 8081
    dispatcher_port: int = 8082
    demo: bool = False
    max_body_bytes: int = 4 * 1024 * 1024
    publish_timeout_s: float = 3.0
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        tokens = tuple(
            t.strip() for t in env.get("WINDOWGATE_API_TOKENS", "").split(",") if t.strip()
        )
        return cls(
            kafka_bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS") or cls.kafka_bootstrap,
            topic_prefix=env.get("WINDOWGATE_TOPIC_PREFIX", cls.topic_prefix),
            partitions=_int(env, "WINDOWGATE_PARTITIONS", cls.partitions, 1, 10_000),
            app_secret=env.get("META_APP_SECRET") or None,
            verify_token=env.get("META_VERIFY_TOKEN") or None,
            graph_api_url=(env.get("GRAPH_API_URL") or cls.graph_api_url).rstrip("/"),
            graph_api_version=env.get("GRAPH_API_VERSION") or cls.graph_api_version,
            pages_path=env.get("WINDOWGATE_PAGES") or None,
            rules_path=env.get("WINDOWGATE_RULES") or None,
            api_tokens=tokens,
            ingest_port=_int(env, "INGEST_PORT", cls.ingest_port, 0),
            window_port=_int(env, "WINDOW_PORT", cls.window_port, 0),
            dispatcher_port=_int(env, "DISPATCHER_PORT", cls.dispatcher_port, 0),
            demo=_flag(env, "WINDOWGATE_DEMO"),
            max_body_bytes=_int(env, "INGEST_MAX_BODY_BYTES", cls.max_body_bytes, 1024, 2**31 - 1),
            publish_timeout_s=_float(env, "INGEST_PUBLISH_TIMEOUT_S", cls.publish_timeout_s),
            extra=dict(env),
        )
