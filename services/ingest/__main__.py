"""`python -m services.ingest`: the webhook service on INGEST_PORT (settings: DESIGN §4.2)."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from schemas.topics import Topics
from services.common.logs import configure_logging
from services.common.runtime import relax_gc
from services.common.settings import Settings, SettingsError
from services.ingest.app import create_app
from services.ingest.config import IngestConfig
from services.ingest.publisher import KafkaPublisher

log = logging.getLogger("services.ingest")


def serve(app: web.Application, host: str, port: int) -> None:
    """Run `app` until SIGINT / SIGTERM, with the garbage collector tuned for a webhook server
    (`relax_gc`: each body allocates many short-lived objects)."""
    relax_gc()
    web.run_app(app, host=host, port=port, access_log=None, print=None)


def main() -> int:
    configure_logging("ingest")
    try:
        settings = Settings.from_env()
        config = IngestConfig.from_settings(settings)
    except SettingsError as exc:
        log.critical("ingest cannot start: %s", exc)
        return 2
    if config.demo:
        log.warning(
            "DEMO MODE (WINDOWGATE_DEMO): webhook signatures are checked against the public demo "
            "secret unless META_APP_SECRET is set. Never expose this instance to the internet."
        )
    topics = Topics(settings.topic_prefix)
    publisher = KafkaPublisher(settings.kafka_bootstrap, topics, settings.partitions)
    app = create_app(config, publisher, topics)
    log.info(
        "ingest starting",
        extra={"host": config.host, "port": config.port, "events_topic": topics.events},
    )
    serve(app, config.host, config.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
