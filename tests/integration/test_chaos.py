"""`make chaos` in the suite: 60 seconds of the same faults, every count must be 0.

The run is the black box of `bench.chaos`: its own Kafka broker (it kills and restarts it, so it
never uses KAFKA_BOOTSTRAP_SERVERS), ingest, two window workers, two dispatchers and a Graph
stand-in as processes, traffic through their HTTP faces, and a broadcast created, paused and
resumed while the faults run (its commands written straight to the broker). The assertion names
every count that is not 0, with examples, and the faults with their recovery times.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.chaos.__main__ import run, summary
from bench.chaos.run import Options

pytestmark = pytest.mark.integration


async def test_sixty_seconds_of_faults_lose_nothing_and_spend_nothing_twice(
    tmp_path: Path,
) -> None:
    options = Options(seconds=60.0, seed=11, out=tmp_path / "chaos.json", settle_s=60.0)
    report = await run(options)
    (tmp_path / "chaos.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    assert report["faults"], "no fault was injected"
    assert report["traffic"]["webhook_bodies_accepted"] > 0
    assert report["traffic"]["requests_answered"] > 0
    assert report["traffic"]["graph_calls"] > 0
    broadcasts = report["broadcasts"]  # created, paused and resumed while faults ran
    assert [c["kind"] for c in broadcasts["commands"]] == ["create", "pause", "resume"]
    assert all(b["recipients_decided"] > 0 for b in broadcasts["by_id"].values()), broadcasts
    failed = {name: count for name, count in report["counts"].items() if count}
    assert not failed, summary(report)
