"""`make demo`: the pure core on Meta's webhook fixtures, with a short summary table.

Offline and instant: replays every webhook fixture through the fold the window worker runs and
decides a handful of requests at chosen instants, as the worker does. `make run` runs the real
services (python -m devtools.local_run); this needs no broker.

    python -m devtools.demo
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.decision import Decision
from schemas.request import SendRequest
from windowgate.core.pages import PageConfig
from windowgate.core.rulebook import load_rules
from windowgate.core.timeconst import DAY_MS, HOUR_MS
from windowgate.core.timestamps import ms_to_iso, parse_iso_ms
from windowgate.meta.normalise import Normalised, normalise
from windowgate.offline import OfflineGateway

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR_ENV = "WINDOWGATE_SHARED_DIR"

PAGE = "682498171943165"
USER = "1254459154682919"
IG_ACCOUNT = "17841400000000000"
IG_USER = "6800000000000001"
T01 = 1502905976377  # fixture 01: the user's quick reply
T09 = 1458692752478  # fixture 09: OTN opt-in; fixture 12: the page's policy block
T15 = 1700000000000  # fixture 15: an Instagram message; fixture 10: the recurring opt-in
T11 = 1700500000000  # fixture 11: the user stops the recurring notifications


def _say(message: str = "") -> None:
    print(message, flush=True)


# ---- the timeline -------------------------------------------------------------------------------


def fixtures_dir() -> Path | None:
    configured = os.environ.get(SHARED_DIR_ENV)
    shared = Path(configured).expanduser() if configured else REPO_ROOT.parent / "shared"
    path = shared / "fixtures" / "meta-webhooks"
    return path if path.is_dir() else None


@dataclass(frozen=True)
class Webhook:
    """One webhook body, due at the time of its latest event."""

    label: str
    at: int
    normalised: Normalised


@dataclass(frozen=True)
class Step:
    """One request, decided at `at` against everything folded before it."""

    label: str
    at: int
    request: SendRequest


def load_webhooks(folder: Path) -> list[Webhook]:
    webhooks = []
    for path in sorted(folder.glob("*.json")):
        normalised = normalise(orjson.loads(path.read_bytes()))
        at = max((e.timestamp for e in normalised.events), default=0)
        webhooks.append(Webhook(path.name.split("-")[0], at, normalised))
    return webhooks


def _made_up(label: str, page: str, ts: int, element: dict[str, Any]) -> Webhook:
    """A webhook in Meta's documented shape that the fixtures lack, clearly labelled as such."""
    element = {"recipient": {"id": page}, "timestamp": ts, **element}
    body = {"object": "page", "entry": [{"id": page, "time": ts, "messaging": [element]}]}
    return Webhook(f"{label} (made up for the demo)", ts, normalise(body))


def demo_webhooks(folder: Path) -> list[Webhook]:
    """The fixtures, plus Meta lifting fixture 12's block and the other app passing the thread back
    (fixture 13 is a standby message: another app owned the conversation)."""
    unblock = {"policy-enforcement": {"action": "unblock"}}
    passed = {
        "sender": {"id": USER},
        "pass_thread_control": {"new_owner_app_id": "1517776481860111"},
    }
    return [
        *load_webhooks(folder),
        _made_up("unblock", PAGE, T09 + 30 * 60_000, unblock),
        _made_up("pass_thread_control", PAGE, T09 + 12 * HOUR_MS, passed),
    ]


def _req(request_id: str, page: str = PAGE, user: str = USER, **fields: Any) -> SendRequest:
    fields.setdefault("message", {"text": "Your size is back in stock"})
    return SendRequest(request_id=request_id, page_id=page, user_id=user, **fields)


OTN = {"purpose": "otn", "topic": "back-in-stock:adidas-sl72"}
RN = {"purpose": "recurring", "topic": "weekly-deals"}
STEPS = [
    Step("OTN on the opted-in topic (09)", T09 + 15 * 60_000, _req("r-otn-0", **OTN)),
    Step("OTN on the opted-in topic (09)", T09 + HOUR_MS, _req("r-otn-00", **OTN)),
    Step("OTN on the opted-in topic (09)", T09 + DAY_MS, _req("r-otn-1", **OTN)),
    Step("OTN again, same topic", T09 + 2 * DAY_MS, _req("r-otn-2", **OTN)),
    Step("OTN retried with request_id r-otn-1", T09 + 2 * DAY_MS, _req("r-otn-1", **OTN)),
    Step("reply 1 h after the user's message (01)", T01 + HOUR_MS, _req("r-reply")),
    Step("reply 25 h after it", T01 + 25 * HOUR_MS, _req("r-late")),
    Step(
        "human agent reply 25 h after it",
        T01 + 25 * HOUR_MS,
        _req("r-human", purpose="human_agent", human_author="maria@shop.example"),
    ),
    Step(
        "Instagram reply 1 h after a message (15)",
        T15 + HOUR_MS,
        _req("r-ig", page=IG_ACCOUNT, user=IG_USER, platform="instagram"),
    ),
    Step("recurring 'weekly-deals' (10)", T15 + DAY_MS, _req("r-rn-1", **RN)),
    Step("recurring, after the user's STOP (11)", T11 + DAY_MS, _req("r-rn-2", **RN)),
    Step(
        "recurring, after Meta ended it", parse_iso_ms("2026-03-02T10:00:00Z"), _req("r-rn-3", **RN)
    ),
    Step(
        "tag ACCOUNT_UPDATE, day before retirement",
        parse_iso_ms("2026-04-26T10:00:00Z"),
        _req("r-tag-1", purpose="tag", tag="ACCOUNT_UPDATE"),
    ),
    Step(
        "tag ACCOUNT_UPDATE, day after retirement",
        parse_iso_ms("2026-04-28T10:00:00Z"),
        _req("r-tag-2", purpose="tag", tag="ACCOUNT_UPDATE"),
    ),
]


def _when(ms: int) -> str:
    return ms_to_iso(ms)[:16].replace("T", " ")


def _row(number: int, step: Step, decision: Decision) -> tuple[str, ...]:
    answer = "allowed" if decision.allowed else "refused"
    if decision.duplicate:
        answer += " (dup)"
    reason: str = decision.reason
    if not decision.allowed and decision.alternatives:
        n = len(decision.alternatives)
        reason += f" ({n} alternative{'s' if n > 1 else ''})"
    return (str(number), step.label, _when(step.at), answer, decision.mechanism or "-", reason)


def run_timeline(gateway: OfflineGateway, webhooks: list[Webhook]) -> list[tuple[str, ...]]:
    """Webhooks and requests in time order: each request sees exactly what came before it."""
    pending = sorted(webhooks, key=lambda w: w.at)
    rows: list[tuple[str, ...]] = []
    for number, step in enumerate(sorted(STEPS, key=lambda s: s.at), start=1):
        due = [w for w in pending if w.at <= step.at]
        if due:
            pending = pending[len(due) :]
            for webhook in due:
                gateway.apply_events(webhook.normalised.events)
            kinds = dict.fromkeys(e.KIND for w in due for e in w.normalised.events)
            names = " ".join(w.label for w in due)
            rows.append(("", f"webhook {names}: {', '.join(kinds)}", "", "", "", ""))
        rows.append(_row(number, step, gateway.decide(step.request, step.at)))
    return rows


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """Request rows in columns; webhook rows (empty first cell) as notes that span the table."""
    header = ("#", "request", "at (UTC)", "answer", "mechanism", "reason")
    columns = [r for r in [header, *rows] if r[0]]
    widths = [max(len(r[i]) for r in columns) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        if not row[0]:
            _say(f"    · {row[1]}")
            continue
        _say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description="windowgate's demo (make demo): the policy core on Meta's webhook fixtures.",
    )
    parser.parse_args(argv)

    _say("windowgate demo")
    _say(
        "This runs the services' shared core offline: Meta's webhook fixtures are folded into\n"
        "per-user state and requests are decided against it (make run runs the services).\n"
    )
    folder = fixtures_dir()
    if folder is None:
        _say(
            "The webhook fixtures were not found (<repo>/../shared/fixtures/meta-webhooks); "
            f"set {SHARED_DIR_ENV} to the shared/ directory."
        )
        return 1
    webhooks = demo_webhooks(folder)
    fixtures = [w for w in webhooks if "made up" not in w.label]
    events = sum(len(w.normalised.events) for w in fixtures)
    odd = [(w.label, u) for w in fixtures for u in w.normalised.unsupported]
    _say(
        f"{len(fixtures)} webhook fixtures from {folder}: {events} events, "
        f"{len(odd)} elements not understood."
    )
    for label, item in odd:
        _say(f"  {label}: {item.path}: {item.reason}")
    _say(
        f"Pages file stand-in: page {PAGE} has the Human Agent permission; region unset.\n"
        "Webhooks and requests run in time order: each request sees what came before it.\n"
    )
    pages = {PAGE: PageConfig(page_id=PAGE, human_agent=True)}
    gateway = OfflineGateway(load_rules().with_pages(pages))
    _print_table(run_timeline(gateway, webhooks))
    _say(
        "\nAn allowed OTN spends its token (rows 3-4); a retried request_id gets its first "
        "decision back (row 5).\n"
        "Your own files: windowgate decide --webhooks FILE --request FILE [--now ISO8601]\n"
        "What changed on 2026-04-27: windowgate rules diff 2026-04-26 2026-04-27"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
