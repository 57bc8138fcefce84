"""The window worker's configuration: the shared `Settings` plus the few variables it adds.

| variable | default | meaning |
|---|---|---|
| WINDOW_APP_ID | `<prefix>window` | group, transactional id prefix, changelog names |
| WINDOW_HOST | 0.0.0.0 | address the HTTP server binds |
| WINDOW_ADVERTISED_URL | http://<hostname>:<WINDOW_PORT> | how other workers reach this one |
| WINDOW_BATCH | 1000 | input records per partition per transaction (at most) |
| WINDOW_REACH_FLUSH_S | 0.5 | how often reach aggregates absorb state changes |
| WINDOW_SESSION_TIMEOUT_S | 10 | how long a silent (killed) worker keeps its partitions |
| WINDOW_LOG_LEVEL | INFO | log level |
| WINDOW_FREEZE_AT_REQUEST | unset | test hook: SIGSTOP itself mid-batch after deciding it |
| WINDOW_BROADCAST_SLICE | 100 | keys a broadcast's fan-out walks per partition per transaction |
| WINDOW_BROADCAST_YIELD | 2.0 | after a slice of t s, the worker slices again after t x this |

The changelog topics are `<app id>-users-changelog`, `<app id>-pages-changelog` and
`<app id>-broadcasts-changelog`. Their
replication is that of every topic, WINDOWGATE_REPLICATION_FACTOR (`Settings.replication_factor`),
with the `min.insync.replicas` of `changelog_configs`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from services.common.settings import (
    REPLICATION_VARIABLE,
    Settings,
    SettingsError,
    env_number,
    env_whole,
)
from services.common.topics import replication_configs

USERS_TABLE = "users"
PAGES_TABLE = "pages"
BROADCASTS_TABLE = "broadcasts"
_OLD_REPLICATION_VARIABLE = "WINDOW_REPLICATION_FACTOR"


@dataclass(frozen=True)
class WindowConfig:
    settings: Settings
    app_id: str = "windowgate.window"
    host: str = "0.0.0.0"
    advertised_url: str = ""
    replication_factor: int = 1
    batch: int = 1000
    reach_flush_s: float = 0.5
    session_timeout_s: float = 10.0
    log_level: str = "INFO"
    freeze_at_request: str | None = None
    broadcast_slice: int = 100
    broadcast_yield: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WindowConfig:
        env = settings.extra
        if env.get(_OLD_REPLICATION_VARIABLE, "").strip():
            raise SettingsError(
                f"{_OLD_REPLICATION_VARIABLE} is replaced by {REPLICATION_VARIABLE}, "
                "the replication of every topic: set that one instead"
            )
        advertised = env.get("WINDOW_ADVERTISED_URL") or (
            f"http://{socket.gethostname()}:{settings.window_port}"
        )
        return cls(
            settings=settings,
            app_id=env.get("WINDOW_APP_ID") or f"{settings.topic_prefix}window",
            host=env.get("WINDOW_HOST") or cls.host,
            advertised_url=advertised.rstrip("/"),
            replication_factor=settings.replication_factor,
            batch=env_whole(env, "WINDOW_BATCH", cls.batch, 1),
            reach_flush_s=env_number(env, "WINDOW_REACH_FLUSH_S", cls.reach_flush_s, positive=True),
            session_timeout_s=env_number(
                env, "WINDOW_SESSION_TIMEOUT_S", cls.session_timeout_s, positive=True
            ),
            log_level=(env.get("WINDOW_LOG_LEVEL") or cls.log_level).upper(),
            freeze_at_request=env.get("WINDOW_FREEZE_AT_REQUEST") or None,
            broadcast_slice=env_whole(env, "WINDOW_BROADCAST_SLICE", cls.broadcast_slice, 1),
            broadcast_yield=env_number(env, "WINDOW_BROADCAST_YIELD", cls.broadcast_yield, 0.0),
        )

    @property
    def changelog_configs(self) -> dict[str, str]:
        """Topic configs for the changelogs that go with `replication_factor`."""
        return replication_configs(self.replication_factor)

    @property
    def users_changelog(self) -> str:
        return changelog_topic(self.app_id, USERS_TABLE)

    @property
    def pages_changelog(self) -> str:
        return changelog_topic(self.app_id, PAGES_TABLE)

    @property
    def broadcasts_changelog(self) -> str:
        return changelog_topic(self.app_id, BROADCASTS_TABLE)


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic of a table (the names faust used, so existing deployments keep them)."""
    return f"{app_id}-{table}-changelog"
