"""`make run` for now: the pure core on Meta's webhook fixtures, with a short summary table.

The services (ingest, window, dispatcher), the Graph API stand-in and the traffic simulator do not
exist yet; they arrive with the ingest/window/dispatcher work and will replace this. Until then the
demo starts the local Kafka broker the services will use (if none answers), replays every webhook
fixture through the same fold the window service will run, and decides a handful of requests at
chosen instants, as the dispatcher will.

    python -m windowgate.demo [--no-broker] [--broker-timeout SECONDS]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas.decision import Decision
from schemas.request import SendRequest
from windowgate.normalise import normalise
from windowgate.offline import OfflineGateway
from windowgate.pages import PageConfig
from windowgate.rulebook import load_rules
from windowgate.timeconst import DAY_MS, HOUR_MS
from windowgate.timestamps import ms_to_iso, parse_iso_ms

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR_ENV = "WINDOWGATE_SHARED_DIR"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

PAGE = "682498171943165"
USER = "1254459154682919"
IG_ACCOUNT = "17841400000000000"
IG_USER = "6800000000000001"
T01 = 1502905976377  # fixture 01: the user's quick reply
T09 = 1458692752478  # fixture 09: OTN opt-in; fixture 12: the page's policy block
T15 = 1700000000000  # fixture 15: an Instagram message


def _say(message: str = "") -> None:
    print(message, flush=True)


# ---- the broker ---------------------------------------------------------------------------------


def ensure_broker(timeout_s: float) -> str:
    """A one-line status: the broker answering, started, or why the demo carries on without it."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    bootstrap = configured or DEFAULT_BOOTSTRAP
    try:
        from windowgate.devbroker import probe

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        if probe(bootstrap, timeout_s=3.0):
            return f"Kafka answers at {bootstrap}"
    except Exception as exc:  # the probe is a courtesy: never let it stop the demo
        return f"could not probe Kafka at {bootstrap} ({type(exc).__name__}: {exc}); carrying on"
    if configured:
        return f"KAFKA_BOOTSTRAP_SERVERS={configured} does not answer; carrying on without it"
    _say(
        f"No Kafka at {bootstrap}: starting the dev broker (make broker), up to {timeout_s:.0f} s ..."
    )
    command = [sys.executable, "-m", "windowgate.devbroker", "start"]
    try:
        done = subprocess.run(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return (
            f"the dev broker did not answer within {timeout_s:.0f} s; carrying on without it "
            "(see `python -m windowgate.devbroker status`, stop it with `make broker-stop`)"
        )
    except OSError as exc:
        return f"could not run the dev broker ({exc}); carrying on without it"
    if done.returncode != 0:
        return f"the dev broker failed to start (exit {done.returncode}, see above); carrying on"
    answer = done.stdout.strip().splitlines()
    return (
        f"dev broker ready at {answer[-1] if answer else bootstrap} (stop it with make broker-stop)"
    )


# ---- the replay ---------------------------------------------------------------------------------


def fixtures_dir() -> Path | None:
    configured = os.environ.get(SHARED_DIR_ENV)
    shared = Path(configured).expanduser() if configured else REPO_ROOT.parent / "shared"
    path = shared / "fixtures" / "meta-webhooks"
    return path if path.is_dir() else None


def replay(gateway: OfflineGateway, folder: Path) -> None:
    kinds: Counter[str] = Counter()
    unsupported = 0
    files = sorted(folder.glob("*.json"))
    for path in files:
        normalised = normalise(orjson.loads(path.read_bytes()))
        gateway.apply_events(normalised.events)
        kinds.update(type(e).__name__ for e in normalised.events)
        for item in normalised.unsupported:
            unsupported += 1
            _say(f"  {path.name}: {item.path}: not understood: {item.reason}")
    listed = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    _say(
        f"Replayed {len(files)} webhook fixtures from {folder}:\n  {sum(kinds.values())} events "
        f"({listed});\n  {unsupported} elements not understood."
    )
    _say(
        f"State: {len(gateway.users)} users on {len({s.page_id for s in gateway.users.values()})} "
        f"pages; page {PAGE} is blocked by fixture 12 (policy enforcement)."
    )


def unblock_body(page: str, ts: int) -> dict[str, Any]:
    """Meta's policy-enforcement `unblock`, as it would arrive after the page appealed."""
    return {
        "object": "page",
        "entry": [
            {
                "id": page,
                "time": ts,
                "messaging": [
                    {
                        "recipient": {"id": page},
                        "timestamp": ts,
                        "policy-enforcement": {"action": "unblock"},
                    }
                ],
            }
        ],
    }


# ---- the requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    label: str
    at: int
    request: SendRequest


def _req(request_id: str, page: str = PAGE, user: str = USER, **fields: Any) -> SendRequest:
    return SendRequest(request_id=request_id, page_id=page, user_id=user, **fields)


OTN = {"purpose": "otn", "topic": "back-in-stock:adidas-sl72"}
BEFORE_BLOCK_LIFTED = [
    Step("reply 1 h after the user's message (01)", T01 + HOUR_MS, _req("r-blocked")),
]
AFTER_BLOCK_LIFTED = [
    Step("reply 1 h after the user's message (01)", T01 + HOUR_MS, _req("r-reply")),
    Step("reply 25 h after it", T01 + 25 * HOUR_MS, _req("r-late")),
    Step(
        "human agent reply 25 h after it",
        T01 + 25 * HOUR_MS,
        _req("r-human", purpose="human_agent", human_author="maria@shop.example"),
    ),
    Step("OTN on the opted-in topic (09)", T09 + DAY_MS, _req("r-otn-1", **OTN)),
    Step("OTN again, same topic", T09 + 2 * DAY_MS, _req("r-otn-2", **OTN)),
    Step("OTN retried with request_id r-otn-1", T09 + 2 * DAY_MS, _req("r-otn-1", **OTN)),
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
    Step(
        "recurring 'weekly-deals' (10), 2026-03",
        parse_iso_ms("2026-03-02T10:00:00Z"),
        _req("r-rn", purpose="recurring", topic="weekly-deals"),
    ),
    Step(
        "Instagram reply 1 h after the message (15)",
        T15 + HOUR_MS,
        _req("r-ig", page=IG_ACCOUNT, user=IG_USER, platform="instagram"),
    ),
]


def _row(number: int, step: Step, decision: Decision) -> tuple[str, ...]:
    answer = "allowed" if decision.allowed else "refused"
    if decision.duplicate:
        answer += " (dup)"
    reason = decision.reason
    if not decision.allowed and decision.alternatives:
        reason += f" ({len(decision.alternatives)} alternatives)"
    return (
        str(number),
        step.label,
        ms_to_iso(step.at)[:16].replace("T", " "),
        answer,
        decision.mechanism or "-",
        reason,
    )


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    header = ("#", "request", "at (UTC)", "answer", "mechanism", "reason")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        _say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m windowgate.demo",
        description="windowgate's demo (make run): the policy core on Meta's webhook fixtures.",
    )
    parser.add_argument("--no-broker", action="store_true", help="do not start or probe Kafka")
    parser.add_argument(
        "--broker-timeout",
        type=float,
        default=240.0,
        metavar="SECONDS",
        help="how long to wait for the dev broker (the first start fetches jars; default 240)",
    )
    args = parser.parse_args(argv)

    _say("windowgate demo")
    _say(
        "The services (ingest, window, dispatcher), the Graph API stand-in and the traffic "
        "simulator arrive\nwith the ingest/window/dispatcher work. Until then this runs their "
        "shared core offline: Meta's\nwebhook fixtures are folded into per-user state and "
        "requests are decided against it.\n"
    )
    if not args.no_broker:
        _say(f"Broker: {ensure_broker(args.broker_timeout)}\n")

    folder = fixtures_dir()
    if folder is None:
        _say(
            "The webhook fixtures were not found (<repo>/../shared/fixtures/meta-webhooks); "
            f"set {SHARED_DIR_ENV} to the shared/ directory."
        )
        return 1
    pages = {PAGE: PageConfig(page_id=PAGE, human_agent=True)}
    gateway = OfflineGateway(load_rules().with_pages(pages))
    replay(gateway, folder)
    _say(f"Pages file stand-in: page {PAGE} has the Human Agent permission; region unset.\n")

    rows = []
    number = 0
    for step in BEFORE_BLOCK_LIFTED:
        number += 1
        rows.append(_row(number, step, gateway.decide(step.request, step.at)))
    unblock_at = T09 + HOUR_MS
    gateway.apply_webhook(unblock_body(PAGE, unblock_at))
    rows.append(
        ("", f"-- page unblocked by Meta at {ms_to_iso(unblock_at)[:16]} --", "", "", "", "")
    )
    for step in AFTER_BLOCK_LIFTED:
        number += 1
        rows.append(_row(number, step, gateway.decide(step.request, step.at)))
    _print_table(rows)
    _say(
        "\nAn allowed OTN spends its token (row 6); a retried request_id gets its first decision "
        "back (row 7).\nYour own files: windowgate decide --webhooks FILE --request FILE --now "
        "ISO8601;  the rule changes: windowgate rules diff 2026-04-26 2026-04-27"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
