"""`python -m bench.chaos`: see the package docstring."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.chaos import __doc__ as DOC
from bench.chaos.run import Chaos, Options, say
from bench.chaos.stack import REPO_ROOT

EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def summary(report: dict[str, Any]) -> str:
    lines = ["", "==== chaos summary " + "=" * 60]
    traffic = report["traffic"]
    lines.append(
        f"traffic: {traffic['webhook_bodies_accepted']}/{traffic['webhook_bodies']} webhook bodies"
        f" accepted ({traffic['accepted_events']} events), {traffic['requests_answered']}/"
        f"{traffic['requests']} requests answered, {traffic['graph_calls']} Graph calls; "
        f"503 rate ingest {traffic['ingest_503_rate']:.1%}, API {traffic['api_503_rate']:.1%}"
    )
    for fault in report["faults"]:
        recovery = fault["recovery_s"]
        lines.append(
            f"  fault at {fault['at_s']:5.0f} s: {fault['name']:<48} "
            + (f"recovered in {recovery:5.1f} s" if recovery is not None else fault["note"])
        )
    for name, exits in report["unexpected_exits"].items():
        lines.append(f"  {name} exited on its own {len(exits)}x: {exits[0]}")
    details = report["details"]
    for name, count in report["counts"].items():
        mark = "ok  " if count == 0 else "FAIL"
        lines.append(f"{mark} {name.replace('_', ' ')}: {count}")
        examples = details.get(name, {}).get("examples", []) if name in details else []
        lines.extend(f"       e.g. {e}" for e in examples[:3])
        if name == "accepted_webhooks_lost" and count:
            for part in ("events_missing_in_topic", "events_missing_in_live_state"):
                lines.append(f"       {part.replace('_', ' ')}: {details[part]['count']}")
            for window, n in report["accepted_webhooks_lost_by_fault"].items():
                lines.append(f"       {n} of them accepted after: {window}")
    if report["counts"]["replay_differences"]:
        lines.append("       replay: " + details["replay"]["summary"].replace("\n", "\n       "))
    lines.append("PASS: every count is 0" if report["passed"] else "FAILED: see the counts above")
    return "\n".join(lines)


def default_out() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return REPO_ROOT / "bench" / "results" / f"chaos-{stamp}.json"


async def run(options: Options) -> dict[str, Any]:
    chaos = Chaos(options)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
    try:
        return await chaos.run()
    finally:
        say("stopping every process of the run")
        await chaos.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=(DOC or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=240.0, help="seconds of faults (240)")
    parser.add_argument("--seed", type=int, default=1, help="traffic seed (1)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    parser.add_argument("--rate", type=int, default=8, help="webhook bodies per second (8)")
    parser.add_argument("--requests", type=int, default=4, help="send requests per second (4)")
    parser.add_argument("--users", type=int, default=100, help="users per page (100, 3 pages)")
    parser.add_argument("--settle", type=float, default=90.0, help="max settle seconds (90)")
    parser.add_argument("--keep", action="store_true", help="keep logs and data dirs")
    args = parser.parse_args(argv)
    options = Options(
        seconds=args.seconds,
        seed=args.seed,
        out=args.out or default_out(),
        webhooks_per_s=args.rate,
        requests_per_s=args.requests,
        users_per_page=args.users,
        settle_s=args.settle,
        keep=args.keep,
    )
    try:
        report = asyncio.run(run(options))
    except asyncio.CancelledError:
        print("chaos: interrupted; every process stopped", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"chaos: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    assert options.out is not None
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(summary(report))
    print(f"report: {options.out}")
    return EXIT_PASS if report["passed"] else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
