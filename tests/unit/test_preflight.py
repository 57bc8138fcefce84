"""`python -m services.preflight`: every configuration problem once, one line each, before start."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import preflight


@pytest.fixture
def good(tmp_path: Path) -> dict[str, str]:
    pages = tmp_path / "pages.json"
    pages.write_text('{"pages": {"682498171943165": {"access_token": "EAAB", "region": "FR"}}}')
    return {
        "META_APP_SECRET": "s3cret",
        "META_VERIFY_TOKEN": "verify-me",
        "WINDOWGATE_API_TOKENS": "t1,t2",
        "WINDOWGATE_PAGES": str(pages),
    }


def test_a_complete_configuration_has_no_problem(good: dict[str, str]) -> None:
    assert preflight.problems(good) == []


def test_each_problem_is_one_line_naming_what_to_set(good: dict[str, str], tmp_path: Path) -> None:
    broken = {**good, "META_VERIFY_TOKEN": "", "WINDOWGATE_API_TOKENS": " , "}
    broken["WINDOWGATE_PAGES"] = str(tmp_path / "missing.json")
    broken["DISPATCHER_BATCH"] = "many"
    found = preflight.problems(broken)
    assert all("\n" not in line for line in found)
    assert [line.split(" ", 1)[0] for line in found] == [
        "ingest",
        "DISPATCHER_BATCH",
        "WINDOWGATE_API_TOKENS",
        "WINDOWGATE_PAGES:",
    ]
    assert "META_VERIFY_TOKEN" in found[0]
    assert "cannot read pages file" in found[3]


def test_main_exits_2_and_says_it_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("META_APP_SECRET", "META_VERIFY_TOKEN", "WINDOWGATE_DEMO"):
        monkeypatch.delenv(name, raising=False)
    assert preflight.main() == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("windowgate configuration: ingest needs META_APP_SECRET")
