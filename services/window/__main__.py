"""`python -m services.window worker` runs a window worker; `... replay` rebuilds the table.

    python -m services.window worker          # env: see services.window.config and README
    python -m services.window replay --help   # the same as `windowgate replay`

The worker creates missing topics (each keyed topic with WINDOWGATE_PARTITIONS partitions, and
refuses to start if one exists with another count), then runs until SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from faust.worker import Worker

from schemas.codec import SchemaError
from services.common.logs import configure_logging
from services.common.runtime import load_rulebook
from services.common.settings import Settings, SettingsError
from services.common.topics import TopicLayoutError, Topics, ensure_topics
from services.window.config import WindowConfig

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
    from services.window.app import WindowWorker  # faust import side effects only for the worker

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(
            ensure_topics(
                settings.kafka_bootstrap,
                Topics(settings.topic_prefix),
                settings.partitions,
                config.replication_factor,
            )
        )
    except (TimeoutError, TopicLayoutError, OSError) as exc:
        log.error("cannot prepare the topics: %s", exc)
        return 1
    except Exception as exc:  # aiokafka's connection errors share no base class worth naming
        log.error("cannot reach Kafka at %s: %r", settings.kafka_bootstrap, exc)
        return 1
    config.data_dir.mkdir(parents=True, exist_ok=True)
    worker = WindowWorker(config, rules)
    log.info(
        "window worker %s starting: app %s, store %s, data %s, %d partitions",
        config.advertised_url,
        config.app_id,
        config.store,
        config.data_dir,
        settings.partitions,
    )
    Worker(
        worker.app,
        loop=loop,
        loglevel=config.log_level,
        override_logging=False,
        quiet=True,
    ).execute_from_commandline()
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
