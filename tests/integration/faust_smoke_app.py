"""A minimal faust-streaming worker for test_kafka_smoke.py, run as a subprocess.

    python faust_smoke_app.py BOOTSTRAP APP_ID INPUT_TOPIC PROBE_TOPIC DATADIR MODE DUMP_PATH

MODE ``count``: an agent adds each (key, amount) event of INPUT_TOPIC into the table ``totals``
(memory store), so every update goes to the changelog topic ``<APP_ID>-totals-changelog``.

MODE ``dump``: no counting agent; a fresh instance of the same app recovers ``totals`` from the
changelog, and on any event of PROBE_TOPIC writes the table as JSON to DUMP_PATH (atomically).

Runs until SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust
from faust.worker import Worker


def build_app(
    bootstrap: str,
    app_id: str,
    input_topic: str,
    probe_topic: str,
    datadir: str,
    mode: str,
    dump_path: str,
) -> faust.App:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=datadir,
        web_enabled=False,
        topic_partitions=1,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=0.5,
    )
    totals = app.Table(
        "totals",
        default=int,
        partitions=1,
        key_type=str,
        value_type=int,  # str/int keys and values: faust's changelog codec is JSON
    )

    if mode == "count":
        source = app.topic(
            input_topic,
            key_type=str,
            value_type=int,
            key_serializer="json",
            value_serializer="json",
        )

        @app.agent(source)
        async def count(stream: AsyncIterator[Any]) -> None:
            async for key, amount in stream.items():  # type: ignore[attr-defined]
                totals[key] += amount

    elif mode == "dump":
        probe = app.topic(probe_topic, value_serializer="json")

        @app.agent(probe)
        async def dump(stream: AsyncIterator[Any]) -> None:
            async for _ in stream:
                target = Path(dump_path)
                tmp = target.with_suffix(".tmp")
                tmp.write_text(json.dumps(dict(totals.items()), sort_keys=True))
                os.replace(tmp, target)

    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return app


def main(argv: list[str]) -> None:
    if len(argv) != 7:
        raise SystemExit(__doc__)
    app = build_app(*argv)
    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
