"""`python -m services.preflight`: check the gateway's configuration once, before it starts.

docker compose runs it (`config-check`) before ingest, window and dispatcher, so a missing secret or
a bad pages file is one message, once, instead of a service that exits and is restarted forever.
It asks each service's own configuration (no second copy of their rules) and adds what production
needs besides: API tokens and a pages file. Exit 0 when all is well, else 2 with one line each.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping

from schemas.codec import SchemaError
from services.common.runtime import load_rulebook
from services.common.settings import Settings, SettingsError
from services.dispatcher.config import DispatcherConfig
from services.ingest.config import IngestConfig
from services.window.config import WindowConfig
from windowgate.core.rulebook import RulesError

SERVICE_CONFIGS: tuple[Callable[[Settings], object], ...] = (
    IngestConfig.from_settings,
    WindowConfig.from_settings,
    DispatcherConfig.from_settings,
)


def problems(env: Mapping[str, str]) -> list[str]:
    """What stops the gateway from serving real traffic with this environment, one line each."""
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        return [str(exc)]
    found: list[str] = []
    for build in SERVICE_CONFIGS:
        try:
            build(settings)
        except SettingsError as exc:
            found.append(str(exc))
    if not settings.api_tokens:
        found.append(
            "WINDOWGATE_API_TOKENS is not set: every /v1 call would be refused (401); "
            "set one or more bearer tokens, comma-separated"
        )
    if settings.pages_path is None:
        found.append(
            "WINDOWGATE_PAGES is not set: no page has an access token, so nothing can be sent"
        )
    else:
        try:
            load_rulebook(settings)
        except (SchemaError, RulesError) as exc:
            found.append(f"WINDOWGATE_PAGES: {exc}")
    return found


def main() -> int:
    found = problems(os.environ)
    for line in found:
        print(f"windowgate configuration: {line}", file=sys.stderr, flush=True)
    if found:
        return 2
    print("windowgate configuration: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
