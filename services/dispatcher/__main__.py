"""`python -m services.dispatcher`: deliver decisions through the Graph API, serve the HTTP API.

Environment: DESIGN.md §4.2 (KAFKA_BOOTSTRAP_SERVERS, WINDOWGATE_TOPIC_PREFIX,
WINDOWGATE_PARTITIONS, GRAPH_API_URL, GRAPH_API_VERSION, WINDOWGATE_PAGES, WINDOWGATE_API_TOKENS,
DISPATCHER_PORT) and the DISPATCHER_* variables of `services.dispatcher.config.ENV`. Several
instances with the same settings share the partitions (and each page's rate budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from schemas.codec import SchemaError
from services.common.logs import configure_logging
from services.common.runtime import load_rulebook, relax_gc
from services.common.settings import Settings, SettingsError
from services.dispatcher.config import DispatcherConfig
from services.dispatcher.credentials import load_page_tokens
from services.dispatcher.service import serve
from windowgate.core.rulebook import RulesError


def main() -> int:
    configure_logging("dispatcher")
    try:
        settings = Settings.from_env()
        config = DispatcherConfig.from_settings(settings)
        rules = load_rulebook(settings)
        page_tokens = load_page_tokens(settings.pages_path)
    except (SettingsError, SchemaError, RulesError) as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2
    relax_gc()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, rules, page_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
