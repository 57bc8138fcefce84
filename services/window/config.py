"""The window worker's configuration: the shared `Settings` plus the few variables it adds.

| variable | default | meaning |
|---|---|---|
| WINDOW_STORE | rocksdb:// | table store: `rocksdb://` (local RocksDB + changelog) or `memory://` |
| WINDOW_DATA_DIR | .windowgate/window | faust data dir (RocksDB files): one per worker per host |
| WINDOW_APP_ID | `<prefix>window` | faust app id: consumer group and changelog topic names |
| WINDOW_HOST | 0.0.0.0 | address the HTTP server binds |
| WINDOW_ADVERTISED_URL | http://<hostname>:<WINDOW_PORT> | how other workers reach this one |
| WINDOW_STANDBY_REPLICAS | 1 | warm copies of other workers' partitions (fast take-over) |
| WINDOW_REACH_FLUSH_S | 0.5 | how often reach aggregates absorb state changes |
| WINDOW_SESSION_TIMEOUT_S | 10 | how long a silent (killed) worker keeps its partitions |
| WINDOW_LOG_LEVEL | INFO | log level |

The changelog topics are `<app id>-users-changelog` and `<app id>-pages-changelog`. Their
replication is that of every topic, WINDOWGATE_REPLICATION_FACTOR (`Settings.replication_factor`),
with the `min.insync.replicas` of `changelog_configs`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import (
    REPLICATION_VARIABLE,
    Settings,
    SettingsError,
    env_number,
    env_whole,
)
from services.common.topics import replication_configs

STORES = ("rocksdb://", "memory://")
USERS_TABLE = "users"
PAGES_TABLE = "pages"
_OLD_REPLICATION_VARIABLE = "WINDOW_REPLICATION_FACTOR"


@dataclass(frozen=True)
class WindowConfig:
    settings: Settings
    store: str = "rocksdb://"
    data_dir: Path = Path(".windowgate/window")
    app_id: str = "windowgate.window"
    host: str = "0.0.0.0"
    advertised_url: str = ""
    standby_replicas: int = 1
    replication_factor: int = 1
    reach_flush_s: float = 0.5
    session_timeout_s: float = 10.0
    log_level: str = "INFO"

    @classmethod
    def from_settings(cls, settings: Settings) -> WindowConfig:
        env = settings.extra
        store = env.get("WINDOW_STORE") or cls.store
        if store not in STORES:
            raise SettingsError(f"WINDOW_STORE must be one of {', '.join(STORES)}, got {store!r}")
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
            store=store,
            data_dir=Path(env.get("WINDOW_DATA_DIR") or cls.data_dir).expanduser(),
            app_id=env.get("WINDOW_APP_ID") or f"{settings.topic_prefix}window",
            host=env.get("WINDOW_HOST") or cls.host,
            advertised_url=advertised.rstrip("/"),
            standby_replicas=env_whole(env, "WINDOW_STANDBY_REPLICAS", cls.standby_replicas, 0),
            replication_factor=settings.replication_factor,
            reach_flush_s=env_number(env, "WINDOW_REACH_FLUSH_S", cls.reach_flush_s, positive=True),
            session_timeout_s=env_number(
                env, "WINDOW_SESSION_TIMEOUT_S", cls.session_timeout_s, positive=True
            ),
            log_level=(env.get("WINDOW_LOG_LEVEL") or cls.log_level).upper(),
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


def changelog_topic(app_id: str, table: str) -> str:
    """faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"
