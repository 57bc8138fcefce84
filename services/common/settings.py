"""Settings from the environment (README, Configuration): one table, safe defaults, clear errors."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class SettingsError(ValueError):
    """A variable is set to something unusable; the message names it."""


def env_whole(
    env: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    """A whole-number variable, or `default` when unset; the error names the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from exc
    if high is not None and not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    if value < low:
        raise SettingsError(f"{name} must be at least {low}, got {value}")
    return value


def env_number(
    env: Mapping[str, str],
    name: str,
    default: float,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    positive: bool = False,
) -> float:
    """A numeric variable, or `default` when unset; the error names the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc
    if positive and not value > 0:
        raise SettingsError(f"{name} must be positive, got {value:g}")
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return value


REPLICATION_VARIABLE = "WINDOWGATE_REPLICATION_FACTOR"
MAX_REPLICATION = 32767  # Kafka's own limit (a 16-bit count)


def min_insync_replicas(replication: int) -> int:
    """`min.insync.replicas` for a topic of this replication factor: min(2, rf).

    With acks=all (every producer here), a record is acknowledged once this many replicas hold it:
    two copies whenever there can be two (rf 3: one broker may be down and writes go on; rf 2: a
    broker down stops writes rather than keep a single copy), one on a single-node broker.
    """
    return min(2, replication)


def replication_from_env(env: Mapping[str, str] | None = None) -> int:
    """WINDOWGATE_REPLICATION_FACTOR (default 1): the replication of every topic we create."""
    return env_whole(
        os.environ if env is None else env, REPLICATION_VARIABLE, 1, 1, MAX_REPLICATION
    )


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "windowgate."
    partitions: int = 8
    replication_factor: int = 1
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
            partitions=env_whole(env, "WINDOWGATE_PARTITIONS", cls.partitions, 1, 10_000),
            replication_factor=replication_from_env(env),
            app_secret=env.get("META_APP_SECRET") or None,
            verify_token=env.get("META_VERIFY_TOKEN") or None,
            graph_api_url=(env.get("GRAPH_API_URL") or cls.graph_api_url).rstrip("/"),
            graph_api_version=env.get("GRAPH_API_VERSION") or cls.graph_api_version,
            pages_path=env.get("WINDOWGATE_PAGES") or None,
            rules_path=env.get("WINDOWGATE_RULES") or None,
            api_tokens=tokens,
            ingest_port=env_whole(env, "INGEST_PORT", cls.ingest_port, 0, 65535),
            window_port=env_whole(env, "WINDOW_PORT", cls.window_port, 0, 65535),
            dispatcher_port=env_whole(env, "DISPATCHER_PORT", cls.dispatcher_port, 0, 65535),
            demo=_flag(env, "WINDOWGATE_DEMO"),
            max_body_bytes=env_whole(
                env, "INGEST_MAX_BODY_BYTES", cls.max_body_bytes, 1024, 2**31 - 1
            ),
            publish_timeout_s=env_number(
                env, "INGEST_PUBLISH_TIMEOUT_S", cls.publish_timeout_s, positive=True
            ),
            extra=dict(env),
        )
