"""One chaos run: set up the stack, drive traffic through faults, settle, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.chaos.checks import (
    DecisionFindings,
    Finding,
    WebhookFindings,
    check_broadcast,
    check_decisions,
    check_graph,
    check_webhooks,
    decode_decisions,
    decode_events,
    read_topic,
    request_ids,
    run_replay,
    user_states,
)
from bench.chaos.stack import Broker, Service, clean_environ, service_env
from bench.chaos.traffic import Traffic, broadcast_command, broadcast_specs
from bench.results import commit as current_commit
from devtools.devbroker import free_port, unique_name
from devtools.graph_standin import GraphStandIn
from schemas.broadcast import CommandKind
from schemas.events import Event, MessageReceived, encode_event
from schemas.topics import Topics
from services.common.kafka import durable_producer
from services.common.runtime import now_ms
from services.common.topics import ensure_topics

APP_SECRET = "chaos-app-secret"
VERIFY_TOKEN = "chaos-verify-token"
API_TOKEN = "chaos-api-token"
PAGES = {
    "682498171943165": "chaos-page-token-shoes",
    "542998526103632": "chaos-page-token-books",
    "310987654321098": "chaos-page-token-tools",
}
SESSION_TIMEOUT_S = 6  # window workers and dispatchers: a frozen member is evicted after this
FREEZE_S = SESSION_TIMEOUT_S + 5  # longer than the session timeout: the group moves on
PAUSE_S = 2.0  # a killed process stays down this long
STARTUP_LIMIT_S = 180.0
RECOVERY_LIMIT_S = 120.0
HUNG_START_S = 25.0
STUCK_S = 20.0  # settling ends early when nothing changed for this long
BROADCAST_SLICE = 1
BROADCAST_AT = 0.3  # of the run: the broadcasts are created then, paused, and resumed
BROADCAST_PAUSE_S = 4.0


@dataclass
class Options:
    seconds: float = 240.0
    seed: int = 1
    out: Path | None = None
    webhooks_per_s: int = 8
    requests_per_s: int = 4
    users_per_page: int = 100
    partitions: int = 4
    settle_s: float = 90.0
    keep: bool = False


@dataclass
class FaultRecord:
    name: str
    at_s: float  # since traffic started
    duration_s: float = 0.0  # the fault itself: down / frozen until restarted / thawed
    recovery_s: float | None = None  # fault start until a webhook, a decision and Graph work again
    note: str = ""


WORK_PREFIX = "windowgate-chaos-"
OWNER_FILE = "harness.pid"


def new_work_dir() -> Path:
    """A temp dir for this run, after removing those of runs killed with SIGKILL (their harness
    could not clean up; its children died with it): dirs whose owner pid is no longer alive."""
    for old in Path(tempfile.gettempdir()).glob(f"{WORK_PREFIX}*"):
        try:
            pid = int((old / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not one this code made, or still being set up: leave it
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    (work / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return work


def say(message: str) -> None:
    print(f"chaos: {message}", flush=True)


@dataclass
class Chaos:
    opts: Options
    work: Path = field(default_factory=lambda: new_work_dir())
    services: dict[str, Service] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    now_fault: str = "warming up"

    def __post_init__(self) -> None:
        self.rng = random.Random(self.opts.seed)
        self.run_id = f"{self.opts.seed}x{int(time.time()) % 100_000}"
        self.prefix = f"{unique_name('chaos')}."
        self.app_id = f"{self.prefix}window"
        self.broker = Broker(self.work / "kafka")
        self.standin = GraphStandIn(PAGES)
        self.wall_offset_s = time.time() - time.monotonic()
        self.started = time.monotonic()
        self.stale_dir = self.work / "stale-window"
        self.probes = 0
        self.commit = (
            current_commit()
        )  # the code this run loaded, not what is checked out at its end
        self.hung_starts: list[str] = []
        self.others: dict[str, Service] = {}  # not part of the stack: the previous run
        self.traffic: Traffic | None = None
        self.session: aiohttp.ClientSession | None = None
        self.broadcasts = broadcast_specs(self.run_id, next(iter(PAGES)))
        self.broadcast_commands: list[dict[str, Any]] = []

    # ---- the stack ------------------------------------------------------------------------------

    def _service(
        self, name: str, argv: list[str], port: int, extra: dict[str, str], *, stack: bool = True
    ) -> Service:
        env = service_env(
            self.base_env, self.broker.bootstrap, self.prefix, self.opts.partitions, extra
        )
        service = Service(
            name,
            [sys.executable, *argv],
            env,
            self.work / f"{name}.log",
            f"http://127.0.0.1:{port}/healthz",
        )
        (self.services if stack else self.others)[name] = service
        return service

    def _window_env(self, port: int, data: Path, prefix: str | None = None) -> dict[str, str]:
        app_id = self.app_id if prefix is None else f"{prefix}window"
        return {
            "WINDOWGATE_API_TOKENS": API_TOKEN,
            "WINDOW_PORT": str(port),
            "WINDOW_HOST": "127.0.0.1",
            "WINDOW_ADVERTISED_URL": f"http://127.0.0.1:{port}",
            "WINDOW_DATA_DIR": str(data),
            "WINDOW_APP_ID": app_id,
            "WINDOW_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
            # small slices: the broadcast is still fanning out when it is paused and faults hit
            "WINDOW_BROADCAST_SLICE": str(BROADCAST_SLICE),
        }

    async def setup(self) -> None:
        assert self.session is not None
        self.work.mkdir(parents=True, exist_ok=True)
        pages_file = self.work / "pages.json"
        pages_file.write_bytes(
            orjson.dumps({"pages": {p: {"access_token": t} for p, t in PAGES.items()}})
        )
        say(f"work dir {self.work}; starting Kafka on {self.broker.bootstrap}")
        started = time.monotonic()
        await self.broker.start()
        say(f"Kafka up in {time.monotonic() - started:.1f} s; topics {self.prefix}*")
        await ensure_topics(self.broker.bootstrap, Topics(self.prefix), self.opts.partitions)
        graph = await self.standin.start()
        self.base_env = {
            **clean_environ(),
            "META_APP_SECRET": APP_SECRET,
            "META_VERIFY_TOKEN": VERIFY_TOKEN,
            "WINDOWGATE_API_TOKENS": API_TOKEN,
            "WINDOWGATE_PAGES": str(pages_file),
            "GRAPH_API_URL": graph,
        }
        ingest_port = free_port()
        self._service(
            "ingest",
            ["-m", "services.ingest"],
            ingest_port,
            {"INGEST_PORT": str(ingest_port), "INGEST_HOST": "127.0.0.1"},
        )
        for n in (1, 2):
            port = free_port()
            self._service(
                f"window-{n}",
                ["-m", "services.window", "worker"],
                port,
                self._window_env(port, self.work / f"window-{n}"),
            )
        for n in (1, 2):
            port = free_port()
            self._service(
                f"dispatcher-{n}",
                ["-m", "services.dispatcher"],
                port,
                {
                    "DISPATCHER_PORT": str(port),
                    "DISPATCHER_INSTANCE_ID": f"chaos-dispatcher-{n}",
                    "DISPATCHER_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_S * 1000),
                },
            )
        first = self.services["window-1"]
        first.start()  # alone first: it creates the window's own topics without a race
        await self.wait_healthy(first, STARTUP_LIMIT_S)
        for service in self.services.values():
            if service is not first:
                service.start()
        await asyncio.gather(self.prepare_stale_dir(), self.all_healthy(STARTUP_LIMIT_S))
        say(f"stack up {time.monotonic() - started:.1f} s after Kafka started")

    async def prepare_stale_dir(self) -> None:
        """A window worker of a previous run (another topic prefix) leaves its data dir behind."""
        assert self.session is not None
        old_prefix = f"{unique_name('chaos-old')}."
        port = free_port()
        old = self._service(
            "window-previous-run",
            ["-m", "services.window", "worker"],
            port,
            {
                "WINDOWGATE_TOPIC_PREFIX": old_prefix,
                **self._window_env(port, self.stale_dir, old_prefix),
            },
            stack=False,
        )
        old.start()
        try:
            await self.wait_healthy(old, STARTUP_LIMIT_S)
            # Something for its tables to hold: users of the old run, on the same pages.
            producer = durable_producer(self.broker.bootstrap)
            await producer.start()
            try:
                for n in range(50):
                    event = MessageReceived(
                        page_id=next(iter(PAGES)),
                        user_id=str(8 * 10**15 + n),
                        timestamp=now_ms(),
                        mid=f"m_old_{n}",
                        dedup_key=f"msg:m_old_{n}",
                    )
                    await producer.send(
                        Topics(old_prefix).events, encode_event(event), key=event.key.encode()
                    )
                await producer.flush()
            finally:
                await producer.stop()
            await asyncio.sleep(3.0)  # folded into its tables
        finally:
            old.kill()

    async def wait_healthy(self, service: Service, limit_s: float) -> float:
        """Until /healthz answers 200. A first start that hangs (a faust worker can wait forever
        when its changelog topics, created a moment before, are not in its metadata yet) is
        killed and started again after HUNG_START_S, and noted."""
        assert self.session is not None
        started = last_start = time.monotonic()
        while not await service.healthy(self.session):
            if service.down or not service.alive:
                raise RuntimeError(f"{service.name} exited; log {service.log}:\n{service.tail()}")
            if time.monotonic() - started > limit_s:
                raise RuntimeError(f"{service.name} not healthy after {limit_s:.0f} s")
            if time.monotonic() - last_start > HUNG_START_S:
                say(f"{service.name} not healthy {HUNG_START_S:.0f} s after its start: restarting")
                self.hung_starts.append(f"{service.name} at setup")
                service.kill()
                service.start()
                last_start = time.monotonic()
            await asyncio.sleep(0.3)
        return time.monotonic() - started

    async def all_healthy(self, limit_s: float) -> None:
        await asyncio.gather(*(self.wait_healthy(s, limit_s) for s in self.services.values()))

    async def supervise(self) -> None:
        """A service that ended on its own is noted and started again (the run goes on)."""
        while True:
            await asyncio.sleep(1.0)
            for service in self.services.values():
                if service.reap_unexpected():
                    say(f"{service.name} exited on its own: {service.unexpected_exits[-1]}")
                    await asyncio.sleep(PAUSE_S)
                    service.start()

    # ---- faults ---------------------------------------------------------------------------------

    async def kill_and_restart(self, name: str, **override: str) -> None:
        service = self.services[name]
        service.kill()
        await asyncio.sleep(PAUSE_S)
        service.env.update(override)
        service.start()

    async def restart_on_stale_dir(self, name: str) -> None:
        stale = self.work / f"{name}-stale"
        if self.stale_dir.exists():
            shutil.copytree(self.stale_dir, stale)
        else:  # a worker that keeps nothing on disk left nothing behind: leave something odd
            stale.mkdir(parents=True)
            (stale / "left-behind-by-another-run").write_bytes(b"\x00stale\xff")
        await self.kill_and_restart(name, WINDOW_DATA_DIR=str(stale))

    async def freeze(self, name: str) -> None:
        service = self.services[name]
        service.freeze()
        await asyncio.sleep(FREEZE_S)
        service.thaw()

    async def broker_crash(self) -> None:
        await self.broker.kill()
        await asyncio.sleep(PAUSE_S)
        await self.broker.start()

    async def broker_crash_then_freeze(self, name: str) -> None:
        await self.broker_crash()
        await self.freeze(name)

    def plan(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """Every service killed once, the broker crashed, window workers frozen (in steady traffic
        and right after the broker returns), a worker restarted on a stale data dir."""
        faults: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("kill -9 ingest", lambda: self.kill_and_restart("ingest")),
            ("kill -9 window-1", lambda: self.kill_and_restart("window-1")),
            ("SIGSTOP window-2 (steady traffic)", lambda: self.freeze("window-2")),
            ("kill -9 dispatcher-1", lambda: self.kill_and_restart("dispatcher-1")),
            (
                "kill -9 broker, restart, SIGSTOP window-1",
                lambda: self.broker_crash_then_freeze("window-1"),
            ),
            ("kill -9 dispatcher-2", lambda: self.kill_and_restart("dispatcher-2")),
            (
                "kill -9 window-2, restart on a stale data dir",
                lambda: self.restart_on_stale_dir("window-2"),
            ),
        ]
        if self.opts.seconds >= 200:
            faults.append(
                (
                    "kill -9 broker, restart, SIGSTOP window-2",
                    lambda: self.broker_crash_then_freeze("window-2"),
                )
            )
        return faults

    async def inject(self, stop: asyncio.Event) -> None:
        plan = self.plan()
        slot = max(self.opts.seconds - 10.0, 1.0) / len(plan)
        for n, (name, fault) in enumerate(plan):
            wait = self.started + 5.0 + n * slot - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            record = FaultRecord(name, time.monotonic() - self.started)
            self.faults.append(record)
            self.now_fault = name
            say(f"fault {n + 1}/{len(plan)} at {record.at_s:.0f} s: {name}")
            began = time.monotonic()
            await fault()
            record.duration_s = round(time.monotonic() - began, 1)
            self.now_fault = f"recovering from: {name}"
            recovered = await self.probe(began + RECOVERY_LIMIT_S)
            if recovered is None:
                record.note = f"not recovered within {RECOVERY_LIMIT_S:.0f} s"
            else:
                record.recovery_s = round(recovered - began, 1)
            say(f"  {name}: {record.note or f'recovered after {record.recovery_s} s'}")
            self.now_fault = "steady traffic"
        stop.set()

    async def probe(self, deadline: float) -> float | None:
        """When did a new user message get accepted, folded, and a response to it decided allowed
        and sent? (The end-to-end path, through whichever instances are up.)"""
        assert self.traffic is not None
        self.probes += 1
        page = next(iter(PAGES))
        user = str(9 * 10**15 + self.probes)
        body = self.traffic.probe_body(page, user)
        if not await self.traffic.post_body(body, until=deadline):
            return None
        while time.monotonic() < deadline:
            request = self.traffic.new_request(page, user)
            assert request is not None
            request.wire["purpose"] = "response"
            answer = await self.traffic.post_request(request, until=deadline)
            if answer is not None and answer.get("allowed"):
                return time.monotonic()
            await asyncio.sleep(1.0)
        return None

    # ---- the broadcast --------------------------------------------------------------------------

    async def drive_broadcast(self) -> None:
        """Create the run's broadcast a while in, pause it, resume it: its commands written with a
        plain producer to every partition of the commands topic, as the front writes them (each
        retried until the broker takes it: it may be down at that moment)."""
        at = self.started + BROADCAST_AT * self.opts.seconds
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        await self.broadcast_command("create")
        await asyncio.sleep(BROADCAST_PAUSE_S / 4)
        await self.broadcast_command("pause")
        await asyncio.sleep(BROADCAST_PAUSE_S)
        await self.broadcast_command("resume")

    async def broadcast_command(self, kind: CommandKind) -> None:
        topic = Topics(self.prefix).broadcast_commands
        for attempt in range(60):
            producer = durable_producer(self.broker.bootstrap, request_timeout_ms=10_000)
            try:
                await producer.start()
                for spec in self.broadcasts:
                    value = broadcast_command(spec, kind)
                    for partition in range(self.opts.partitions):
                        await producer.send_and_wait(
                            topic, value, key=spec.broadcast_id.encode(), partition=partition
                        )
                break
            except Exception as exc:  # the broker is being killed: write them again (harmless)
                say(f"broadcast {kind}: {type(exc).__name__}; again (attempt {attempt + 1})")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await producer.stop()
        at = round(time.monotonic() - self.started, 1)
        self.broadcast_commands.append({"kind": kind, "at_s": at})
        say(f"broadcasts: {kind} at {at} s")

    # ---- traffic and progress -------------------------------------------------------------------

    async def drive(self, stop: asyncio.Event) -> None:
        assert self.traffic is not None
        tick = 0
        while not stop.is_set() or time.monotonic() - self.started < self.opts.seconds:
            await self.traffic.tick(self.opts.webhooks_per_s, self.opts.requests_per_s)
            tick += 1
            if tick % 10 == 0:
                say(
                    f"[{time.monotonic() - self.started:4.0f} s] {self.now_fault} | "
                    f"{self.traffic.ledger.progress()} | Graph calls {len(self.standin.calls)}"
                )
            await asyncio.sleep(1.0)

    # ---- the run --------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=20)
        ) as session:
            self.session = session
            await self.setup()
            window_urls = [
                self.services[f"window-{n}"].health_url.removesuffix("/healthz") for n in (1, 2)
            ]
            self.traffic = Traffic(
                rng=self.rng,
                run_id=self.run_id,
                pages=PAGES,
                users_per_page=self.opts.users_per_page,
                ingest_url=self.services["ingest"].health_url.removesuffix("/healthz"),
                dispatcher_urls=[
                    self.services[f"dispatcher-{n}"].health_url.removesuffix("/healthz")
                    for n in (1, 2)
                ],
                app_secret=APP_SECRET,
                api_token=API_TOKEN,
                give_up_at=float("inf"),
            )
            self.traffic.session = session
            self.started = time.monotonic()
            self.traffic.give_up_at = self.started + 3 * self.opts.seconds + 300
            stop = asyncio.Event()
            supervisor = asyncio.ensure_future(self.supervise())
            try:
                await asyncio.gather(self.inject(stop), self.drive(stop), self.drive_broadcast())
                fault_end = time.monotonic()
                say(f"faults done at {fault_end - self.started:.0f} s; settling")
                self.now_fault = "settling"
                self.traffic.give_up_at = fault_end + self.opts.settle_s
                left = await self.traffic.drain(self.opts.settle_s)
                if left:
                    say(f"{left} posts still retrying at the settle deadline: cancelled")
                return await self.settle_and_check(window_urls, fault_end)
            finally:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor

    async def settle_and_check(self, window_urls: list[str], fault_end: float) -> dict[str, Any]:
        assert self.traffic is not None and self.session is not None
        ledger = self.traffic.ledger
        topics = Topics(self.prefix)
        deadline = fault_end + self.opts.settle_s
        last: tuple[int, int] | None = None
        unchanged_since = time.monotonic()
        while True:
            events = decode_events(await read_topic(self.broker.bootstrap, topics.events))
            decisions = decode_decisions(await read_topic(self.broker.bootstrap, topics.decisions))
            users = {(e.page_id, e.user_id) for b in ledger.bodies if b.accepted for e in b.events}
            states = await user_states(self.session, window_urls, API_TOKEN, users)
            hooks = check_webhooks(ledger, events, states)
            published = request_ids(await read_topic(self.broker.bootstrap, topics.send_requests))
            asked = check_decisions(ledger, decisions, published)
            now = (hooks.lost.count, asked.without_one.count)
            if now != last:
                last, unchanged_since = now, time.monotonic()
            if (
                now == (0, 0)
                or time.monotonic() > deadline
                or time.monotonic() - unchanged_since > STUCK_S
            ):
                break
            say(
                f"settling: {hooks.lost.count} accepted webhooks not yet seen, "
                f"{asked.without_one.count} requests without one decision"
            )
            await asyncio.sleep(3.0)
        await asyncio.sleep(2.0)  # the last deliveries of what was just decided
        settled_s = time.monotonic() - fault_end
        graph = check_graph(self.standin.calls, ledger, decisions, self.wall_offset_s)
        broadcasts = [
            check_broadcast(spec.broadcast_id, decisions, self.standin.calls, ledger)
            for spec in self.broadcasts
        ]
        say("replay --compare ...")
        replay = await run_replay(
            self.broker.bootstrap, self.prefix, self.app_id, self.opts.partitions
        )
        report = self.report(hooks, asked, graph, replay, settled_s, events)
        counts = report["counts"]
        counts["broadcast_recipients_decided_twice"] = sum(
            b.decided_twice.count for b in broadcasts
        )
        counts["broadcast_users_messaged_twice"] = sum(b.messaged_twice.count for b in broadcasts)
        report["passed"] = not any(counts.values())
        report["broadcasts"] = {
            "commands": self.broadcast_commands,
            "by_id": {
                spec.broadcast_id: {
                    "recipients_decided": found.recipients,
                    "graph_calls": found.graph_calls,
                    "decided_twice": asdict(found.decided_twice),
                    "messaged_twice": asdict(found.messaged_twice),
                }
                for spec, found in zip(self.broadcasts, broadcasts, strict=True)
            },
        }
        return report

    def report(
        self,
        hooks: WebhookFindings,
        asked: DecisionFindings,
        graph: Any,
        replay: Any,
        settled_s: float,
        events: set[Any],
    ) -> dict[str, Any]:
        assert self.traffic is not None
        ledger = self.traffic.ledger
        accepted = [b for b in ledger.bodies if b.accepted]
        accepted_events: list[Event] = [e for b in accepted for e in b.events]
        ingest_posts = sum(ledger.ingest_status.values())
        api_posts = sum(ledger.api_status.values())
        counts = {
            "accepted_webhooks_lost": hooks.lost.count,
            "requests_without_exactly_one_decision": asked.without_one.count,
            "tokens_in_more_than_one_graph_call": graph.tokens_twice.count,
            "request_ids_in_more_than_one_graph_call": graph.requests_twice.count,
            "graph_calls_the_rules_forbid": graph.forbidden.count,
            "replay_differences": replay.differences,
        }

        def finding(f: Finding) -> dict[str, Any]:
            return {"count": f.count, "examples": f.examples}

        return {
            "passed": not any(counts.values()),
            "counts": counts,
            "details": {
                "events_missing_in_topic": finding(hooks.missing_in_topic),
                "events_missing_in_live_state": finding(hooks.missing_in_state),
                "users_whose_state_query_went_unanswered": finding(hooks.state_unanswered),
                "accepted_webhooks_lost": finding(hooks.lost),
                "requests_without_exactly_one_decision": finding(asked.without_one),
                "requests_without_a_decision": finding(asked.no_decision),
                "requests_with_conflicting_decisions": finding(asked.conflicting),
                "answers_differing_from_the_decisions_topic": finding(asked.answer_mismatch),
                "tokens_in_more_than_one_graph_call": finding(graph.tokens_twice),
                "request_ids_in_more_than_one_graph_call": finding(graph.requests_twice),
                "graph_calls_the_rules_forbid": finding(graph.forbidden),
                "replay": {"exit_code": replay.exit_code, "summary": replay.summary},
            },
            "faults": [asdict(f) for f in self.faults],
            "accepted_webhooks_lost_by_fault": self.by_fault(hooks.lost_at),
            "traffic": {
                "webhook_bodies": len(ledger.bodies),
                "webhook_bodies_accepted": len(accepted),
                "webhook_bodies_batched": sum(1 for b in ledger.bodies if len(b.events) > 1),
                "accepted_events": len(accepted_events),
                "accepted_messages_old": sum(
                    1
                    for e in accepted_events
                    if isinstance(e, MessageReceived) and e.timestamp < now_ms() - 86_400_000
                ),
                "webhook_posts": ingest_posts,
                "webhook_posts_by_status": {str(k): v for k, v in ledger.ingest_status.items()},
                "ingest_503_rate": round(ledger.ingest_status[503] / max(ingest_posts, 1), 4),
                "requests": len(ledger.requests),
                "requests_answered": sum(1 for r in ledger.requests.values() if r.answered),
                "requests_resubmitted": sum(
                    1 for r in ledger.requests.values() if r.submissions > 1
                ),
                "api_posts": api_posts,
                "api_posts_by_status": {str(k): v for k, v in ledger.api_status.items()},
                "api_503_rate": round(ledger.api_status[503] / max(api_posts, 1), 4),
                "graph_calls": graph.calls,
                "events_in_topic": len(events),
            },
            "hung_starts": self.hung_starts,
            "unexpected_exits": {
                s.name: s.unexpected_exits for s in self.services.values() if s.unexpected_exits
            },
            "settle_s": round(settled_s, 1),
            "run": {
                "seconds": self.opts.seconds,
                "seed": self.opts.seed,
                "prefix": self.prefix,
                "partitions": self.opts.partitions,
                "pages": len(PAGES),
                "users_per_page": self.opts.users_per_page,
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "commit": self.commit,
                "broker_starts": self.broker.starts,
            },
        }

    def by_fault(self, times: list[float]) -> dict[str, int]:
        """How many of `times` (monotonic) fell after each fault began, before the next one."""
        counts: dict[str, int] = {}
        for at in times:
            since = at - self.started
            name = "before the first fault"
            for fault in self.faults:
                if fault.at_s <= since:
                    name = f"{fault.at_s:.0f} s {fault.name}"
            counts[name] = counts.get(name, 0) + 1
        return counts

    async def close(self) -> None:
        """Stop every process this run started and remove its temp dirs; whatever happened."""
        for service in [*self.services.values(), *self.others.values()]:
            service.thaw()
            service.kill()
        with contextlib.suppress(Exception):
            await self.standin.stop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.broker.close)
        if self.opts.keep:
            say(f"kept logs and data in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
