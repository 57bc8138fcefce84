"""`python -m services.window worker` runs a window worker; `... replay` rebuilds the table.

    python -m services.window worker          # env: see services.window.config and README
    python -m services.window replay --help   # the same as `windowgate replay`

The worker creates missing topics up front (each keyed topic and both changelogs with
WINDOWGATE_PARTITIONS partitions; it refuses to start if one exists with another count), then runs
until SIGTERM / SIGINT, when it finishes its batches in progress and leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from schemas.codec import SchemaError
from schemas.topics import Topics
from services.common.logs import configure_logging
from services.common.runtime import load_rulebook
from services.common.settings import Settings, SettingsError
from services.common.topics import TopicLayoutError, ensure_topics
from services.window.config import WindowConfig
from services.window.worker import WindowWorker, ensure_broadcast_topics, ensure_changelogs
from windowgate.core.rulebook import RuleBook

USAGE = "usage: python -m services.window {worker | replay [options]}"
log = logging.getLogger("services.window")


def run_worker() -> int:
    try:
        settings = Settings.from_env()
        config = WindowConfig.from_settings(settings)
        configure_logging("window", config.log_level)
        rules = load_rulebook(settings)
    except (SettingsError, SchemaError) as exc:
        print(f"window: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(settings, config, rules))
    except KeyboardInterrupt:
        return 0


async def _serve(settings: Settings, config: WindowConfig, rules: RuleBook) -> int:
    try:
        await ensure_topics(
            settings.kafka_bootstrap,
            Topics(settings.topic_prefix),
            settings.partitions,
            config.replication_factor,
        )
        await ensure_changelogs(
            settings.kafka_bootstrap,
            [config.users_changelog, config.pages_changelog, config.broadcasts_changelog],
            settings.partitions,
            config.replication_factor,
        )
        await ensure_broadcast_topics(
            settings.kafka_bootstrap,
            Topics(settings.topic_prefix),
            settings.partitions,
            config.replication_factor,
        )
    except (TimeoutError, TopicLayoutError, OSError) as exc:
        log.error("cannot prepare the topics: %s", exc)
        return 1
    except Exception as exc:  # aiokafka's connection errors share no base class worth naming
        log.error("cannot reach Kafka at %s: %r", settings.kafka_bootstrap, exc)
        return 1
    worker = WindowWorker(config, rules)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    log.info(
        "window worker %s starting: group %s, %d partitions",
        config.advertised_url,
        config.app_id,
        settings.partitions,
    )
    await worker.run()
    log.info("window worker stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"] and len(args) == 1:
        return run_worker()
    if args[:1] == ["replay"]:
        from services.window.replay import main as replay_main

        return replay_main(args[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
