"""bench.report on a small fake results dir: the latest result wins, a missed target is shown as
missed (listed first, marked in its table, red in its plot), and every plot is a PNG file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import results
from bench.report import latest, render
from bench.results import Figure, write_results

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setattr(results, "RESULTS", folder)
    old = Figure("decide: decisions", 1.0, "decisions/s", "ref: 2/s", 2.0, "≥ 3/s", False)
    write_results("core", [old], True, {}, datetime(2026, 1, 1, tzinfo=UTC))
    core = [
        Figure(
            "decide: decisions",
            65_000,
            "decisions/s",
            "ref: 50,000/s",
            50_000,
            "≥ 100,000/s",
            False,
        ),
        Figure("fold: events", 200_000, "events/s", "ref: 100,000/s", 100_000, "≥ 1/s", True),
    ]
    write_results("core", core, True, {}, datetime(2026, 2, 1, tzinfo=UTC))
    ingest = [Figure("webhook → 200, p99 @ 1,000/s", 7.5, "ms", "bare: 4 ms", 4.0, "≤ 50 ms", True)]
    write_results("ingest", ingest, True, {}, datetime(2026, 2, 1, tzinfo=UTC))
    point: dict[str, Any] = {
        "users": 0,
        "events": 0,
        "rebuild_s": 1.0,
        "fold_events_per_s": 30_000.0,
        "read_events_per_s": 300_000.0,
        "restore_after_kill_s": 10.0,
        "restore_first_start_s": 2.0,
        "healthz_after_kill_s": 9.0,
        "rss_bytes": 0,
        "empty_rss_bytes": 90 * 2**20,
        "memory_per_user_bytes": 1_000.0,
        "stored_value_mean_bytes": 130.0,
    }
    scale = [
        {**point, "users": n, "events": 3 * n, "rss_bytes": 90 * 2**20 + 1_000 * n}
        for n in (10_000, 100_000)
    ]
    write_results("window-scale", [], False, {}, datetime(2026, 2, 1, tzinfo=UTC), {"scale": scale})
    chaos = {
        "passed": False,
        "counts": {"accepted_webhooks_lost": 2, "replay_differences": 0},
        "faults": [
            {"name": "kill -9 ingest", "duration_s": 2.0, "recovery_s": 2.5},
            {"name": "kill -9 broker", "duration_s": 5.0, "recovery_s": None},
        ],
        "traffic": {},
        "run": {"seconds": 60, "commit": "abc1234"},
    }
    (folder / "chaos-20260201T000000Z.json").write_bytes(orjson.dumps(chaos))
    return folder


def test_the_latest_result_of_a_bench_wins(results_dir: Path) -> None:
    found = latest(results_dir, "core")
    assert found is not None
    assert found.path.name == "core-2026-02-01T000000Z.json"
    assert found.document["figures"][0]["value"] == 65_000
    assert latest(results_dir, "window") is None  # window-scale is not window's


def test_the_report_shows_every_miss_and_its_plots(results_dir: Path, tmp_path: Path) -> None:
    out, plots = tmp_path / "REPORT.md", tmp_path / "plots"
    text = render(results_dir, out, plots)

    assert out.read_text() == text
    targets_missed = text.split("## Targets missed")[1].split("##")[0]
    assert "- core: decide: decisions = 65,000 decisions/s, target ≥ 100,000/s" in targets_missed
    assert "fold: events" not in targets_missed
    assert "| decide: decisions | 65,000 decisions/s |" in text
    assert "**NOT met**" in text
    assert "**FAILED**" in text and "| accepted webhooks lost | 2 **NOT met** |" in text
    assert "**not recovered**" in text
    assert "| 100,000 | 300,000 | 30,000/s |" in text
    assert "No results yet for: window, dispatcher, window-broadcast, broadcast." in text
    for name in ("throughput", "latency", "scale", "chaos"):
        assert f"](plots/{name}.png)" in text
        assert (plots / f"{name}.png").read_bytes().startswith(PNG)


def test_an_empty_results_dir_still_renders(tmp_path: Path) -> None:
    text = render(tmp_path, tmp_path / "REPORT.md", tmp_path / "plots")
    assert "None in the latest results." in text
    assert "No fault-test result" in text
    assert not list((tmp_path / "plots").glob("*.png"))


def test_a_run_at_one_size_adds_its_row_to_the_runs_before(results_dir: Path) -> None:
    scale = orjson.loads(next(results_dir.glob("window-scale-*.json")).read_bytes())["scale"]
    bigger = {**scale[-1], "users": 5_000_000, "events": 15_000_000}
    write_results(
        "window-scale", [], False, {}, datetime(2026, 3, 1, tzinfo=UTC), {"scale": [bigger]}
    )
    text = render(results_dir, results_dir / "REPORT.md", results_dir / "plots")
    rows = [line for line in text.splitlines() if line.startswith("| 10,000 |")]
    rows += [line for line in text.splitlines() if line.startswith("| 5,000,000 |")]
    assert len(rows) == 2
    assert "window-scale-2026-02-01T000000Z.json" in text
    assert "window-scale-2026-03-01T000000Z.json" in text
