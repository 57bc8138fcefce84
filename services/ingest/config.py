"""What ingest needs from `Settings`, checked once at start-up so a bad deployment fails loudly.

Demo mode (`WINDOWGATE_DEMO=1`, used by `make run`): signature checks still run, with the fixed
secret and verify token below unless META_APP_SECRET / META_VERIFY_TOKEN are set. They are
public, so demo mode must never face the internet; the service says so in a loud log line.

    DEMO_APP_SECRET   = "windowgate-demo-app-secret"
    DEMO_VERIFY_TOKEN = "windowgate-demo-verify-token"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from services.common.settings import Settings, SettingsError

DEMO_APP_SECRET: Final = "windowgate-demo-app-secret"
DEMO_VERIFY_TOKEN: Final = "windowgate-demo-verify-token"

DEFAULT_RECENT_KEYS: Final = 100_000
"""Dedup keys remembered (about 100 B each): a few minutes of a busy page's redeliveries."""


class ConfigError(SettingsError):
    """Ingest cannot run with these settings; the message says what to set."""


@dataclass(frozen=True, slots=True, repr=False)
class IngestConfig:
    app_secret: bytes
    verify_token: str
    max_body_bytes: int
    publish_timeout_s: float
    recent_keys: int
    host: str
    port: int
    demo: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestConfig:
        """Refuses (ConfigError) without the app secret and verify token, except in demo mode."""
        secret, token = settings.app_secret, settings.verify_token
        if settings.demo:
            secret = secret or DEMO_APP_SECRET
            token = token or DEMO_VERIFY_TOKEN
        missing = [
            name
            for name, value in (("META_APP_SECRET", secret), ("META_VERIFY_TOKEN", token))
            if not value
        ]
        if missing or secret is None or token is None:
            raise ConfigError(
                f"ingest needs {' and '.join(missing)}: the app secret signs every webhook "
                "(X-Hub-Signature-256) and the verify token answers Meta's subscription check. "
                "Set them from the Meta app dashboard, or set WINDOWGATE_DEMO=1 for a local demo."
            )
        extra = settings.extra
        raw_recent = extra.get("INGEST_RECENT_KEYS", "")
        try:
            recent = int(raw_recent) if raw_recent else DEFAULT_RECENT_KEYS
        except ValueError as exc:
            raise ConfigError(
                f"INGEST_RECENT_KEYS must be a whole number, got {raw_recent!r}"
            ) from exc
        if recent < 0:
            raise ConfigError(f"INGEST_RECENT_KEYS must be 0 (off) or more, got {recent}")
        if settings.publish_timeout_s >= 5.0:
            raise ConfigError(
                f"INGEST_PUBLISH_TIMEOUT_S must be under 5 s (Meta's webhook deadline), "
                f"got {settings.publish_timeout_s}"
            )
        return cls(
            app_secret=secret.encode(),
            verify_token=token,
            max_body_bytes=settings.max_body_bytes,
            publish_timeout_s=settings.publish_timeout_s,
            recent_keys=recent,
            host=extra.get("INGEST_HOST") or "0.0.0.0",
            port=settings.ingest_port,
            demo=settings.demo,
        )

    def __repr__(self) -> str:  # never print the secret or the token, even in a traceback
        return (
            f"IngestConfig(max_body_bytes={self.max_body_bytes}, "
            f"publish_timeout_s={self.publish_timeout_s}, recent_keys={self.recent_keys}, "
            f"host={self.host!r}, port={self.port}, demo={self.demo})"
        )
