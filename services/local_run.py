"""`make run`: the whole gateway on one machine, with Meta played by local stand-ins.

Starts (or reuses) a Kafka broker, a Graph API stand-in, the three services, and a traffic
simulator that posts signed, Meta-shaped webhooks to ingest and send requests to the dispatcher's
HTTP API; prints a live summary every few seconds until Ctrl-C (or `--duration`).

With real credentials (META_APP_SECRET, META_VERIFY_TOKEN, GRAPH_API_URL, WINDOWGATE_PAGES) run the
services themselves (`python -m services.ingest`, `python -m services.window worker`,
`python -m services.dispatcher`) instead: this script is for seeing it work without Meta.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from services.common.runtime import now_ms
from services.ingest.config import DEMO_APP_SECRET, DEMO_VERIFY_TOKEN
from services.ingest.signature import sign

REPO_ROOT = Path(__file__).resolve().parents[1]
API_TOKEN = "local-run-token"
PAGES = {
    "682498171943165": {"access_token": "page-token-shoes", "human_agent": True, "region": "US"},
    "542998526103632": {"access_token": "page-token-books", "region": "FR"},
}
TOPICS = ["back-in-stock", "price-drop"]


class Child:
    """One service in a child process, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{self.name} exited ({self.proc.returncode}); log {self.log}:\n{tail}"
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def broker_answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.describe_cluster(), 5)
        return True
    except Exception:  # any failure means: no broker there
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def wait_healthy(
    session: aiohttp.ClientSession, child: Child, url: str, limit_s: float
) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        child.check()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url) as answer:
                if answer.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{child.name} not healthy at {url} after {limit_s:.0f} s; see {child.log}"
            )
        await asyncio.sleep(0.3)


class Simulator:
    """Users who write, opt in to OTN topics and go quiet; services that ask to message them."""

    def __init__(self, ingest: str, dispatcher: str, rng: random.Random) -> None:
        self.ingest = ingest
        self.dispatcher = dispatcher
        self.rng = rng
        self.users: dict[str, list[str]] = {page: [] for page in PAGES}
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.sequence = 0

    def _element(self, page: str, user: str, ts: int) -> dict[str, Any]:
        self.sequence += 1
        base: dict[str, Any] = {"sender": {"id": user}, "recipient": {"id": page}, "timestamp": ts}
        roll = self.rng.random()
        if roll < 0.5:
            base["message"] = {"mid": f"m_run_{self.sequence}", "text": "hi"}
        elif roll < 0.75:
            base["optin"] = {
                "type": "one_time_notif_req",
                "payload": self.rng.choice(TOPICS),
                "one_time_notif_token": f"otn-run-{self.sequence}",
            }
        else:
            base["read"] = {"watermark": ts}
        return base

    async def post_webhook(self, session: aiohttp.ClientSession) -> None:
        page = self.rng.choice(list(PAGES))
        new_user = not self.users[page] or self.rng.random() < 0.3
        user = (
            str(10**15 + self.rng.randrange(10**15))
            if new_user
            else self.rng.choice(self.users[page])
        )
        if new_user:
            self.users[page].append(user)
        # A third of the traffic is old: those users' windows have closed, so requests need tokens.
        age_ms = self.rng.choice([0, 0, 30 * 3_600_000])
        element = self._element(page, user, now_ms() - age_ms)
        body = orjson.dumps(
            {"object": "page", "entry": [{"id": page, "time": now_ms(), "messaging": [element]}]}
        )
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(DEMO_APP_SECRET.encode(), body),
        }
        async with session.post(f"{self.ingest}/webhook", data=body, headers=headers) as answer:
            self.counts[f"webhooks {answer.status}"] += 1

    async def send_request(self, session: aiohttp.ClientSession) -> None:
        page = self.rng.choice(list(PAGES))
        if not self.users[page]:
            return
        self.sequence += 1
        request: dict[str, Any] = {
            "request_id": f"run-{self.sequence}",
            "page_id": page,
            "user_id": self.rng.choice(self.users[page]),
            "message": {"text": "Your size is back in stock"},
        }
        if self.rng.random() < 0.5:
            request["topic"] = self.rng.choice(TOPICS)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with session.post(
            f"{self.dispatcher}/v1/messages", json=request, headers=headers
        ) as answer:
            body = await answer.json(content_type=None)
        self.counts["requests"] += 1
        if isinstance(body, dict) and "reason" in body:
            verdict = "allowed" if body.get("allowed") else "refused"
            self.reasons[f"{verdict} {body.get('mechanism') or '-'} {body['reason']}"] += 1


async def summary(
    session: aiohttp.ClientSession, sim: Simulator, standin: str, started: float
) -> str:
    async with session.get(f"{standin}/_standin/stats") as answer:
        stats = await answer.json(content_type=None)
    lines = [
        f"--- windowgate, {time.monotonic() - started:5.0f} s ---",
        "  " + ", ".join(f"{k}: {v}" for k, v in sorted(sim.counts.items())),
        "  decisions: "
        + (", ".join(f"{k} ×{v}" for k, v in sim.reasons.most_common(6)) or "none yet"),
        f"  Graph stand-in: {stats.get('calls', 0)} calls, double-used tokens: "
        f"{stats.get('double_used_tokens', 0)}",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    if not await broker_answers(bootstrap):
        print(f"no broker at {bootstrap}: starting the dev broker (make broker)…", flush=True)
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "windowgate.devbroker", "start"],
            check=True,
            cwd=REPO_ROOT,
        )
    work = Path(tempfile.mkdtemp(prefix="windowgate-run-"))
    pages_file = work / "pages.json"
    pages_file.write_bytes(orjson.dumps({"pages": PAGES}))
    prefix = f"windowgate.run{int(time.time())}."
    ports = {
        "ingest": args.port,
        "window": args.port + 1,
        "dispatcher": args.port + 2,
        "standin": args.port + 10,
    }
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WINDOWGATE_TOPIC_PREFIX": prefix,
        "WINDOWGATE_PARTITIONS": "4",
        "WINDOWGATE_PAGES": str(pages_file),
        "WINDOWGATE_API_TOKENS": API_TOKEN,
        "WINDOWGATE_DEMO": "1",
        "GRAPH_API_URL": f"http://127.0.0.1:{ports['standin']}",
        "INGEST_PORT": str(ports["ingest"]),
        "WINDOW_PORT": str(ports["window"]),
        "WINDOW_HOST": "127.0.0.1",
        "WINDOW_DATA_DIR": str(work / "window"),
        "DISPATCHER_PORT": str(ports["dispatcher"]),
    }
    py = sys.executable
    print(f"logs and data in {work}; topics {prefix}*", flush=True)
    children = [
        Child(
            "graph-standin",
            [
                py,
                "-m",
                "tests.graph_standin",
                "--port",
                str(ports["standin"]),
                "--pages",
                str(pages_file),
                "--rate",
                "300",
            ],
            env,
            work,
        ),
        Child("ingest", [py, "-m", "services.ingest"], env, work),
        Child("window", [py, "-m", "services.window", "worker"], env, work),
        Child("dispatcher", [py, "-m", "services.dispatcher"], env, work),
    ]
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            for child, url in zip(
                children, ["standin", "ingest", "window", "dispatcher"], strict=True
            ):
                health = "/_standin/stats" if url == "standin" else "/healthz"
                await wait_healthy(session, child, urls[url] + health, 120)
                print(f"{child.name} up at {urls[url]}", flush=True)
            query = {
                "hub.mode": "subscribe",
                "hub.verify_token": DEMO_VERIFY_TOKEN,
                "hub.challenge": "ok",
            }
            async with session.get(f"{urls['ingest']}/webhook", params=query) as answer:
                print(f"webhook verification: {answer.status} {await answer.text()}", flush=True)
            sim = Simulator(urls["ingest"], urls["dispatcher"], random.Random(args.seed))
            started = time.monotonic()
            next_summary = started + args.every
            while not stopping.is_set():
                if args.duration and time.monotonic() - started > args.duration:
                    break
                for child in children:
                    child.check()
                await asyncio.gather(*(sim.post_webhook(session) for _ in range(args.rate)))
                await asyncio.gather(
                    *(sim.send_request(session) for _ in range(max(1, args.rate // 2)))
                )
                if time.monotonic() >= next_summary:
                    print(await summary(session, sim, urls["standin"], started), flush=True)
                    next_summary += args.every
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 1.0)
            print(await summary(session, sim, urls["standin"], started), flush=True)
    finally:
        for child in reversed(children):
            child.stop()
        print(f"stopped; logs in {work}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("INGEST_PORT", 8080)),
        help="ingest port; window +1, dispatcher +2, Graph stand-in +10",
    )
    parser.add_argument("--rate", type=int, default=20, help="webhooks per second")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between summaries")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=7)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
