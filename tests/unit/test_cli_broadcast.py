"""`windowgate broadcast ...` as an operator runs it, against a fake gateway (no service)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from windowgate import cli
from windowgate.cli import main, progress_line
from windowgate.client import HttpError

PAGE = "682498171943165"


def view(status: str, decided: int, audience: int = 4, **kw: Any) -> dict[str, Any]:
    return {
        "broadcast_id": "b1",
        "page_id": PAGE,
        "status": status,
        "audience": audience,
        "decided": decided,
        "sent": decided,
        "failed": 0,
        "unknown": 0,
        "delivered": 0,
        "read": 0,
        "by_mechanism": {"OTN": decided},
        "refused": {},
        "created_at": 1_790_000_000_000,
        "started_at": None,
        "finished_at": None,
        **kw,
    }


@dataclass
class FakeGateway:
    """Records what the CLI asked; answers the next status of `statuses` on each poll."""

    statuses: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    refuse: HttpError | None = None
    closed: bool = False

    async def create_broadcast(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", spec))
        if self.refuse is not None:
            raise self.refuse
        if spec.get("dry_run"):
            return {"broadcast_id": "b1", "dry_run": True, "audience": 3, "by_mechanism": {}}
        return {
            "broadcast_id": spec.get("broadcast_id", "gen"),
            "created": True,
            "status": "running",
        }

    async def broadcast(self, broadcast_id: str) -> dict[str, Any] | None:
        self.calls.append(("status", broadcast_id))
        if broadcast_id != "b1":
            return None
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    async def _command(self, kind: str, broadcast_id: str) -> dict[str, Any]:
        self.calls.append((kind, broadcast_id))
        if broadcast_id != "b1":
            raise HttpError(404, {"error": "not_found"})
        return {"broadcast_id": broadcast_id, "command": kind, "partitions": 8}

    async def pause_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        return await self._command("pause", broadcast_id)

    async def resume_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        return await self._command("resume", broadcast_id)

    async def cancel_broadcast(self, broadcast_id: str) -> dict[str, Any]:
        return await self._command("cancel", broadcast_id)

    async def list_broadcasts(self, page_id: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("list", page_id))
        return [view("done", 4, finished_at=1_790_000_100_000)]

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> FakeGateway:
    fake = FakeGateway()
    opened: list[tuple[str, str]] = []

    def open_gateway(url: str, token: str) -> FakeGateway:
        opened.append((url, token))
        return fake

    monkeypatch.setattr(cli, "open_gateway", open_gateway)
    monkeypatch.setenv("WINDOWGATE_API_TOKEN", "tok")
    monkeypatch.delenv("WINDOWGATE_URL", raising=False)
    fake.opened = opened  # type: ignore[attr-defined]
    return fake


def test_create_sends_the_flags_as_the_body(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "broadcast", "create", "--id", "b1", "--page", PAGE, "--text", "Back in stock",
            "--purpose", "otn", "--topic", "restock", "--label-none", "vip", "--label-none",
            "staff", "--not-before", "2026-12-01T09:00:00Z",
        ]
    )  # fmt: skip
    assert code == 0
    [(kind, spec)] = gateway.calls
    assert kind == "create"
    assert spec == {
        "broadcast_id": "b1",
        "page_id": PAGE,
        "purpose": "otn",
        "not_before": "2026-12-01T09:00:00Z",
        "message": {"text": "Back in stock"},
        "audience": {"topic": "restock", "labels_none": ["vip", "staff"]},
    }
    assert "broadcast b1 created" in capsys.readouterr().out
    assert gateway.opened == [("http://127.0.0.1:8082", "tok")]  # type: ignore[attr-defined]
    assert gateway.closed


def test_create_from_a_file_with_a_dry_run(
    gateway: FakeGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {"page_id": PAGE, "message": {"text": "x"}, "audience": {"labels_any": ["a"]}}
    path = tmp_path / "b.json"
    path.write_bytes(orjson.dumps(spec))
    assert main(["broadcast", "create", "--file", str(path), "--dry-run", "--url", "http://x"]) == 0
    assert gateway.calls == [("create", {**spec, "dry_run": True})]
    assert "dry run of b1: 3 recipients" in capsys.readouterr().out


def test_a_400_names_the_field_and_exits_2(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.refuse = HttpError(
        400, {"field": "audience.topic", "detail": "purpose 'otn' needs a topic"}
    )
    assert main(["broadcast", "create", "--page", PAGE, "--text", "x", "--purpose", "otn"]) == 2
    assert "windowgate: audience.topic: purpose 'otn' needs a topic" in capsys.readouterr().err


def test_no_token_is_a_usage_error(
    gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WINDOWGATE_API_TOKEN")
    assert main(["broadcast", "status", "b1"]) == 2
    assert "--token" in capsys.readouterr().err


def test_status_prints_the_sums(gateway: FakeGateway, capsys: pytest.CaptureFixture[str]) -> None:
    gateway.statuses = [view("running", 2, refused={"token_expired": 1})]
    assert main(["broadcast", "status", "b1"]) == 0
    out = capsys.readouterr().out
    assert "broadcast b1 on page 682498171943165: running" in out
    assert "2/4 decided" in out and "refused 1" in out and "token_expired 1" in out
    assert main(["broadcast", "status", "b1", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["decided"] == 2


def test_status_follow_draws_a_bar_until_the_end_without_a_tty(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.statuses = [view("running", 0), view("running", 2), view("running", 2), view("done", 4)]
    assert main(["broadcast", "status", "b1", "--follow", "--every", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    bars = [line for line in out if line.startswith("[")]
    assert len(bars) == 3  # one line per change, none for the repeated poll
    assert bars[0].startswith("[" + "." * 30 + "]   0%")
    assert bars[1].startswith("[" + "#" * 15 + "." * 15 + "]  50%")
    assert bars[-1].startswith("[" + "#" * 30 + "] 100%") and bars[-1].endswith("done")
    assert "broadcast b1 on page 682498171943165: done" in out


def test_unknown_ids_exit_1(gateway: FakeGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broadcast", "status", "nope"]) == 1
    assert main(["broadcast", "cancel", "nope"]) == 1
    assert "no broadcast 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["pause", "resume", "cancel"])
def test_commands(gateway: FakeGateway, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    assert main(["broadcast", kind, "b1"]) == 0
    assert gateway.calls == [(kind, "b1")]
    assert f"{kind} of b1 written to 8 partitions" in capsys.readouterr().out


def test_list(gateway: FakeGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broadcast", "list", "--page", PAGE]) == 0
    assert gateway.calls == [("list", PAGE)]
    out = capsys.readouterr().out
    assert out.startswith("b1  682498171943165  2026-") and "4/4 decided" in out


def test_progress_line_of_an_empty_finished_broadcast_is_full() -> None:
    assert progress_line(view("done", 0, audience=0), 4).startswith("[####] 100%")
