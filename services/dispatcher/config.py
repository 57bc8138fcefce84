"""What the dispatcher needs from the environment, read once at start-up with safe defaults.

The common variables (broker, prefix, partitions, Graph URL/version, pages, API tokens, port) come
from `Settings`; the dispatcher's own are listed in `ENV` with their defaults and meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, cast

from services.common.settings import Settings, SettingsError, env_number, env_whole

CrashPoint = Literal["after_attempt", "after_call"]
Role = Literal["all", "worker", "api"]
CRASH_POINTS: Final[tuple[CrashPoint, ...]] = ("after_attempt", "after_call")

ENV: Final[dict[str, str]] = {
    "DISPATCHER_GROUP": "consumer group and transactional-id stem (default <prefix>dispatcher)",
    "DISPATCHER_INSTANCE_ID": "static group membership: a restart rejoins at once (none)",
    "DISPATCHER_SESSION_TIMEOUT_MS": "consumer-group session timeout (10000)",
    "DISPATCHER_RATE_TEXT": "calls/s per page for text, links, stickers (300)",
    "DISPATCHER_RATE_MEDIA": "calls/s per page for audio/video (10)",
    "DISPATCHER_GRAPH_TIMEOUT_S": "seconds before a Graph call counts as timed out: unknown (10)",
    "DISPATCHER_GRAPH_CONNECTIONS": "HTTP connections to the Graph API; about rate x latency (100)",
    "DISPATCHER_MAX_RETRIES": "retries of a call rejected before delivery (rate limit) (5)",
    "DISPATCHER_BACKOFF_S": "first retry delay, doubled each time (0.5)",
    "DISPATCHER_BACKOFF_CAP_S": "longest retry delay (30)",
    "DISPATCHER_COOLDOWN_RETRY_S": "wait before retrying a 4/2018354 once; 0 = do not retry (0)",
    "DISPATCHER_IN_FLIGHT": "Graph calls in flight per partition (256)",
    "DISPATCHER_BATCH": "decisions per transaction at most (1000)",
    "DISPATCHER_LOG_RETENTION_H": "hours the dispatch log keeps a request_id (168)",
    "DISPATCHER_WAIT_S": "POST /v1/messages: seconds to wait for the decision (5)",
    "DISPATCHER_OUTCOME_WAIT_S": "seconds to wait for the delivery outcome (2 on /v1, x5 proxy)",
    "DISPATCHER_RECENT": "decisions remembered for GET /v1/decisions/{id} (100000)",
    "DISPATCHER_TOKEN_INDEX": "proxy: index OTN/recurring tokens from the events topic (1)",
    "DISPATCHER_ROLE": "all | worker | api (all)",
    "WINDOW_URL": "a window worker, for broadcast dry runs (http://127.0.0.1:<WINDOW_PORT>)",
    "DISPATCHER_CRASH_AT": "test hook: SIGKILL self at after_attempt | after_call",
    "DISPATCHER_CRASH_REQUEST": "test hook: only for this request_id",
}


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1 or 0, got {raw!r}")


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    bootstrap: str
    prefix: str
    partitions: int
    graph_url: str
    graph_version: str
    api_tokens: tuple[str, ...]
    port: int
    group: str
    instance_id: str | None = None
    session_timeout_ms: int = 10_000
    rate_text: float = 300.0
    rate_media: float = 10.0
    graph_timeout_s: float = 10.0
    graph_connections: int = 100
    max_retries: int = 5
    backoff_s: float = 0.5
    backoff_cap_s: float = 30.0
    cooldown_retry_s: float = 0.0
    in_flight: int = 256
    batch: int = 1000
    log_retention_h: int = 168
    wait_s: float = 5.0
    outcome_wait_s: float = 2.0
    recent: int = 100_000
    token_index: bool = True
    role: Role = "all"
    crash_at: CrashPoint | None = None
    crash_request: str | None = None
    window_url: str = "http://127.0.0.1:8081"

    @property
    def dispatch_log(self) -> str:
        return f"{self.prefix}dispatch-log"

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatcherConfig:
        env = settings.extra
        crash = env.get("DISPATCHER_CRASH_AT", "").strip() or None
        if crash is not None and crash not in CRASH_POINTS:
            raise SettingsError(
                f"DISPATCHER_CRASH_AT must be one of {', '.join(CRASH_POINTS)}, got {crash!r}"
            )
        role = env.get("DISPATCHER_ROLE", "all").strip() or "all"
        if role not in ("all", "worker", "api"):
            raise SettingsError(f"DISPATCHER_ROLE must be all, worker or api, got {role!r}")
        return cls(
            bootstrap=settings.kafka_bootstrap,
            prefix=settings.topic_prefix,
            partitions=settings.partitions,
            graph_url=settings.graph_api_url,
            graph_version=settings.graph_api_version,
            api_tokens=settings.api_tokens,
            port=settings.dispatcher_port,
            group=env.get("DISPATCHER_GROUP", "").strip() or f"{settings.topic_prefix}dispatcher",
            instance_id=env.get("DISPATCHER_INSTANCE_ID", "").strip() or None,
            session_timeout_ms=env_whole(
                env, "DISPATCHER_SESSION_TIMEOUT_MS", 10_000, 1000, 3_600_000
            ),
            rate_text=env_number(env, "DISPATCHER_RATE_TEXT", 300.0, 0.01, 1e6),
            rate_media=env_number(env, "DISPATCHER_RATE_MEDIA", 10.0, 0.01, 1e6),
            graph_timeout_s=env_number(env, "DISPATCHER_GRAPH_TIMEOUT_S", 10.0, 0.05, 600),
            graph_connections=env_whole(env, "DISPATCHER_GRAPH_CONNECTIONS", 100, 1, 100_000),
            max_retries=env_whole(env, "DISPATCHER_MAX_RETRIES", 5, 0, 100),
            backoff_s=env_number(env, "DISPATCHER_BACKOFF_S", 0.5, 0.001, 600),
            backoff_cap_s=env_number(env, "DISPATCHER_BACKOFF_CAP_S", 30.0, 0.001, 3600),
            cooldown_retry_s=env_number(env, "DISPATCHER_COOLDOWN_RETRY_S", 0.0, 0, 3600),
            in_flight=env_whole(env, "DISPATCHER_IN_FLIGHT", 256, 1, 100_000),
            batch=env_whole(env, "DISPATCHER_BATCH", 1000, 1, 100_000),
            log_retention_h=env_whole(env, "DISPATCHER_LOG_RETENTION_H", 168, 1, 24 * 3650),
            wait_s=env_number(env, "DISPATCHER_WAIT_S", 5.0, 0.01, 600),
            outcome_wait_s=env_number(env, "DISPATCHER_OUTCOME_WAIT_S", 2.0, 0, 600),
            recent=env_whole(env, "DISPATCHER_RECENT", 100_000, 1, 100_000_000),
            token_index=_flag(env, "DISPATCHER_TOKEN_INDEX", True),
            role=cast(Role, role),
            crash_at=crash,
            crash_request=env.get("DISPATCHER_CRASH_REQUEST", "").strip() or None,
            window_url=(
                env.get("WINDOW_URL", "").strip() or f"http://127.0.0.1:{settings.window_port}"
            ).rstrip("/"),
        )
