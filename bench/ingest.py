"""`python -m bench.ingest [--quick]`: webhook bodies/s through ingest to Kafka acks, and latency.

The server under test runs alone in its own process, pinned to one CPU: the real ingest app
(signature check, orjson, normalise, encode, an idempotent acks=all producer; a 200 only after
every record of the body is acknowledged). Beside it, measured the same way in the same run, a
bare aiohttp handler that reads the body and answers 200: the reference. The load generator is a
minimal keep-alive HTTP/1.1 client in this process, pinned with the broker to the other CPU(s),
so the client's cost does not come out of the server's core.

Figures:
- throughput: closed loop, CONNECTIONS requests in flight, bodies answered 200 per second;
- CPU per body: the server process's CPU time over the bodies it answered in that round, and
  its inverse, the bodies/s one fully busy core sustains. On a shared machine this is the
  steadier comparison: a neighbour stealing the core lowers the rate, not the CPU per body;
- latency: open loop at a fixed offered load (1,000 bodies/s), measured from each request's
  scheduled send time (a server that falls behind pays for the queue: no coordinated omission).

Inputs are the bench's own traffic (bench/__main__.py `Traffic`: Meta's fixture shapes with fresh
ids, mids and tokens), every body distinct, so the recent-keys cache never short-cuts the work.
The broker is KAFKA_BOOTSTRAP_SERVERS, else a LocalKafka started (and stopped) here. Nothing is
asserted about speed; after the run, the events topic is checked to hold every acked event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.__main__ import Sizes, Traffic
from bench.results import Figure, print_table, shown, write_results
from devtools.devbroker import LocalKafka, free_port, unique_name
from schemas.topics import Topics
from services.common.logs import configure_logging
from services.ingest.__main__ import serve as run_server
from services.ingest.app import create_app
from services.ingest.config import DEFAULT_RECENT_KEYS, IngestConfig
from services.ingest.publisher import KafkaPublisher
from services.ingest.signature import HEADER, sign
from windowgate.meta.normalise import normalise

SECRET: Final = b"bench-app-secret"
HOST: Final = "127.0.0.1"
PARTITIONS: Final = 8
CONNECTIONS: Final = 128
"""Requests in flight in the closed loop: enough to keep the server's core busy while records
wait for the broker's acknowledgement (fewer measure the ack round trip, not the server)."""
RATE: Final = 1_000
"""The fixed offered load of the latency figures, bodies per second."""
MAX_RATE: Final = 11_000
"""Ingest's closed-loop rate is assumed below this when preparing bodies (a run says if not)."""


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    """Closed loop on ingest before measuring: the broker's JIT is slow for its first seconds."""
    throughput_s: float
    latency_s: float
    rounds: int

    @property
    def bodies(self) -> int:
        """Enough distinct bodies that ingest never sees one twice (a repeat would be a cheap
        cache hit), up to MAX_RATE."""
        closed = self.warmup_s + self.rounds * self.throughput_s
        return int(closed * MAX_RATE + self.rounds * self.latency_s * RATE)


FULL = Plan(warmup_s=6.0, throughput_s=5.0, latency_s=8.0, rounds=3)
QUICK = Plan(warmup_s=3.0, throughput_s=3.0, latency_s=4.0, rounds=2)


# ---- the servers (child processes) ---------------------------------------------------------


def _bare_app() -> web.Application:
    """The reference: aiohttp reading the body and answering 200, nothing else."""

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="EVENT_RECEIVED")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/webhook", receive)
    app.router.add_get("/healthz", healthz)
    return app


def _ingest_app(bootstrap: str, prefix: str) -> web.Application:
    config = IngestConfig(
        app_secret=SECRET,
        verify_token="bench",
        max_body_bytes=4 * 1024 * 1024,
        publish_timeout_s=3.0,
        recent_keys=DEFAULT_RECENT_KEYS,
        host=HOST,
        port=0,
        demo=False,
    )
    topics = Topics(prefix)
    return create_app(config, KafkaPublisher(bootstrap, topics, PARTITIONS), topics)


def serve(kind: str, port: int, bootstrap: str, prefix: str, cpu: int | None) -> None:
    """Child process entry point: one server, pinned to `cpu`, until SIGTERM."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    configure_logging(f"bench-{kind}", level="WARNING")
    app = _bare_app() if kind == "bare" else _ingest_app(bootstrap, prefix)
    run_server(app, HOST, port)  # as `python -m services.ingest` runs it (GC settings included)


@contextlib.contextmanager
def server(kind: str, bootstrap: str, prefix: str, cpu: int | None) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.ingest", "--serve", kind, "--port", str(port)]
    cmd += ["--bootstrap", bootstrap, "--prefix", prefix]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        yield Server(kind, port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.kind} server exited ({self.proc.returncode})")
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                conn = await Connection.open(self.port)
                try:
                    request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
                    if await conn.request(request) == 200:
                        return
                finally:
                    conn.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.kind} server is not healthy after {timeout_s} s")
            await asyncio.sleep(0.2)


# ---- the load generator ----------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read status and body. Far cheaper
    than a full client, so the client is not what gets measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            await self.reader.readexactly(int(lower[at + 17 : end]))
        return status

    def close(self) -> None:
        self.writer.close()


def http_request(body: bytes) -> bytes:
    return (
        f"POST /webhook HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"{HEADER}: {sign(SECRET, body)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Bodies:
    """Hands out the prepared requests in order; counts the events of those answered 200."""

    def __init__(self, requests: list[bytes], events: list[int]) -> None:
        self.requests = requests
        self.events = events
        self.next = 0
        self.wrapped = False
        self.acked_events = 0

    def take(self) -> int:
        i = self.next
        self.next += 1
        if self.next == len(self.requests):
            self.next, self.wrapped = 0, True
        return i


@dataclass
class Throughput:
    ok: int
    other: int
    seconds: float
    server_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


async def closed_loop(srv: Server, bodies: Bodies, seconds: float) -> Throughput:
    """CONNECTIONS workers, each sending its next request as soon as the last is answered."""
    conns = [await Connection.open(srv.port) for _ in range(CONNECTIONS)]
    ok = other = 0
    end = 0.0

    async def worker(conn: Connection) -> None:
        nonlocal ok, other
        loop = asyncio.get_running_loop()
        while loop.time() < end:
            i = bodies.take()
            if await conn.request(bodies.requests[i]) == 200:
                ok += 1
                bodies.acked_events += bodies.events[i]
            else:
                other += 1

    try:
        end = asyncio.get_running_loop().time() + seconds
        cpu0, own0, t0 = srv.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        elapsed = time.perf_counter() - t0
        cpu, own = srv.cpu_seconds() - cpu0, time.process_time() - own0
    finally:
        for conn in conns:
            conn.close()
    return Throughput(ok, other, elapsed, cpu / elapsed, own / elapsed)


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    max_ms: float
    ok: int
    other: int
    achieved: float


async def open_loop(srv: Server, bodies: Bodies, seconds: float, rate: int) -> Latency:
    """Requests sent on a fixed schedule, whatever the answers; latency from the schedule."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    conns = [await Connection.open(srv.port) for _ in range(64)]
    for conn in conns:
        idle.put_nowait(conn)
    latencies: list[float] = []
    ok = other = 0
    loop = asyncio.get_running_loop()

    async def one(i: int, scheduled: float) -> None:
        nonlocal ok, other
        conn = await idle.get()
        status = await conn.request(bodies.requests[i])
        latencies.append(loop.time() - scheduled)
        idle.put_nowait(conn)
        if status == 200:
            ok += 1
            bodies.acked_events += bodies.events[i]
        else:
            other += 1

    count = int(seconds * rate)
    start = loop.time() + 0.05
    tasks = []
    try:
        for n in range(count):
            scheduled = start + n / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies.take(), scheduled)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
    finally:
        for conn in conns:
            conn.close()
    latencies.sort()
    cuts = statistics.quantiles(latencies, n=100)
    return Latency(
        p50_ms=cuts[49] * 1000,
        p99_ms=cuts[98] * 1000,
        max_ms=latencies[-1] * 1000,
        ok=ok,
        other=other,
        achieved=count / elapsed,
    )


# ---- the run --------------------------------------------------------------------------------


def _cpus() -> tuple[int | None, set[int] | None]:
    """(the server's CPU, everyone else's CPUs), or (None, None) where pinning is unavailable."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], set(cpus[1:])


def _pin_broker(data_dir: Path | None, others: set[int] | None) -> str:
    """Keep a broker we started off the server's CPU; an external one is out of our hands."""
    if data_dir is None:
        return "external broker (not pinned)"
    if others is None:
        return "broker not pinned"
    pid_file = data_dir / "broker.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), others)
        return f"broker pinned to CPU {','.join(map(str, sorted(others)))}"
    return "broker not pinned"


async def _topic_size(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def _prepare(count: int) -> Bodies:
    traffic = Traffic(Sizes(bodies=count, users=max(count // 10, 100), requests=0, repeats=1))
    raw = traffic.bodies(count)
    return Bodies(
        [http_request(b) for b in raw], [len(normalise(orjson.loads(b)).events) for b in raw]
    )


@dataclass
class Figures:
    throughput: list[Throughput]
    latency: list[Latency]

    @property
    def best(self) -> Throughput:
        """The least disturbed round (the machine is shared: others only ever slow us down)."""
        return max(self.throughput, key=lambda t: t.rate)

    @property
    def calmest(self) -> Latency:
        return min(self.latency, key=lambda t: t.p99_ms)


async def measure(
    bootstrap: str, prefix: str, bodies: Bodies, plan: Plan, cpu: int | None
) -> tuple[Figures, Figures]:
    """Both servers up at once (an idle one costs nothing); rounds alternate between them so
    a disturbance of the machine hits both alike."""
    reference = Bodies(bodies.requests, bodies.events)  # the bare server may reuse bodies
    with (
        server("bare", bootstrap, prefix, cpu) as bare_server,
        server("ingest", bootstrap, prefix, cpu) as ingest_server,
    ):
        await bare_server.wait_ready()
        await ingest_server.wait_ready()
        await closed_loop(bare_server, reference, 1.0)
        await closed_loop(ingest_server, bodies, plan.warmup_s)
        bare, ingest = Figures([], []), Figures([], [])
        for _ in range(plan.rounds):
            bare.throughput.append(await closed_loop(bare_server, reference, plan.throughput_s))
            ingest.throughput.append(await closed_loop(ingest_server, bodies, plan.throughput_s))
        for _ in range(plan.rounds):
            bare.latency.append(await open_loop(bare_server, reference, plan.latency_s, RATE))
            ingest.latency.append(await open_loop(ingest_server, bodies, plan.latency_s, RATE))
    return bare, ingest


async def run(quick: bool) -> None:
    plan = QUICK if quick else FULL
    began = datetime.now(UTC)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    server_cpu, others = _cpus()
    if others is not None:
        os.sched_setaffinity(0, others)
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    data_dir = None if given else Path(tempfile.mkdtemp(prefix="windowgate-bench-kafka-"))
    kafka = LocalKafka(data_dir=data_dir) if data_dir is not None else None
    try:
        bootstrap = kafka.start() if kafka is not None else str(given)
        pinned = _pin_broker(data_dir, others)
        prefix = unique_name("bench-ingest") + "."
        started = time.perf_counter()
        bodies = _prepare(plan.bodies)
        size = statistics.fmean(len(r) for r in bodies.requests)
        per_body = statistics.fmean(bodies.events)
        print(
            f"bench.ingest{' (--quick)' if quick else ''}: Python {platform.python_version()}, "
            f"server on CPU {server_cpu}, load generator on CPU(s) {sorted(others or [])}, "
            f"{pinned}; Kafka {bootstrap}, {PARTITIONS} partitions, acks=all, idempotent.\n"
            f"inputs: {len(bodies.requests):,} distinct signed bodies ({size:,.0f} B average "
            f"request, {per_body:.2f} events each), prepared in "
            f"{time.perf_counter() - started:.1f} s; warm-up {plan.warmup_s:.0f} s; per server "
            f"{plan.rounds} rounds of {CONNECTIONS} connections closed loop for "
            f"{plan.throughput_s:.0f} s, then {plan.rounds} rounds of {RATE:,}/s open loop for "
            f"{plan.latency_s:.0f} s.\n"
        )
        bare, ingest = await measure(bootstrap, prefix, bodies, plan, server_cpu)
        stored = await _topic_size(bootstrap, Topics(prefix).events)
    finally:
        if kafka is not None:
            kafka.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)

    figures = _report(bare, ingest)
    runs: list[Throughput | Latency] = [*ingest.throughput, *ingest.latency]
    total_ok, refused = sum(r.ok for r in runs), sum(r.other for r in runs)
    offered = min(r.achieved for r in ingest.latency)
    print(
        f"\ningest: {total_ok:,} bodies answered 200 after warm-up, {refused:,} not; offered "
        f"≥ {offered:,.0f}/s in the latency runs. The events topic holds "
        f"{stored:,} records for {bodies.acked_events:,} events of acked bodies (warm-up "
        f"included){'' if stored >= bodies.acked_events else ': RECORDS MISSING'}"
        f"{'; BODIES WERE REUSED (cache hits: raise MAX_RATE)' if bodies.wrapped else ''}."
    )
    print(
        f"Of {plan.rounds} alternating rounds each, the table shows the fastest throughput round "
        f"and the latency round with the lowest p99 (a shared machine only ever adds delays). "
        f"All rounds: bodies/s ingest {_all(ingest.throughput, 'rate', '{:,.0f}')}, bare "
        f"{_all(bare.throughput, 'rate', '{:,.0f}')}; p99 ms ingest "
        f"{_all(ingest.latency, 'p99_ms', '{:.1f}')}, "
        f"bare {_all(bare.latency, 'p99_ms', '{:.1f}')}."
        "\nRatios are ingest / bare; the targets are the issue's, for reading, not asserted."
    )
    inputs = {
        "bodies": len(bodies.requests),
        "mean_request_bytes": size,
        "events_per_body": per_body,
        "partitions": PARTITIONS,
        "connections": CONNECTIONS,
        "rounds": plan.rounds,
        "throughput_s": plan.throughput_s,
        "latency_rate": RATE,
        "bodies_ok": total_ok,
        "bodies_refused": refused,
        "events_stored": stored,
        "events_acked": bodies.acked_events,
        "all_rounds": {
            "ingest_rate": [r.rate for r in ingest.throughput],
            "bare_rate": [r.rate for r in bare.throughput],
            "ingest_p99_ms": [r.p99_ms for r in ingest.latency],
            "bare_p99_ms": [r.p99_ms for r in bare.latency],
        },
    }
    path = write_results("ingest", figures, quick, inputs, began)
    print(f"written: {shown(path)}")


def _all(runs: Sequence[Throughput | Latency], name: str, form: str) -> str:
    return " ".join(form.format(getattr(r, name)) for r in runs)


def _report(bare: Figures, ingest: Figures) -> list[Figure]:
    b, i = bare.best, ingest.best
    bl, il = bare.calmest, ingest.calmest
    ratio = i.rate / b.rate if b.rate else 0.0
    # CPU seconds per body: the capacity of one core, whatever else the machine was doing.
    i_cpu, b_cpu = i.server_cpu / i.rate, b.server_cpu / b.rate
    figures = [
        Figure(
            "ingest: bodies/s answered 200 (acked), one core",
            i.rate,
            "bodies/s",
            f"bare aiohttp: {b.rate:,.0f}/s",
            b.rate,
            "≥ 3,000/s and ≥ 0.30x",
            i.rate >= 3_000 and ratio >= 0.3,
            {
                "server_cpu": i.server_cpu,
                "client_cpu": i.client_cpu,
                "bare_server_cpu": b.server_cpu,
                "bare_client_cpu": b.client_cpu,
            },
        ),
        Figure(
            "ingest: server CPU per body",
            i_cpu * 1e6,
            "µs",
            f"bare aiohttp: {b_cpu * 1e6:,.0f} µs",
            b_cpu * 1e6,
        ),
        Figure(
            "ingest: bodies/s per fully busy core (1 / CPU per body)",
            1 / i_cpu,
            "bodies/s",
            f"bare aiohttp: {1 / b_cpu:,.0f}/s",
            1 / b_cpu,
            "≥ 3,000/s and ≥ 0.40x",
            1 / i_cpu >= 3_000 and b_cpu / i_cpu >= 0.4,
        ),
    ]
    for label, mine, theirs, target in (
        ("p50", il.p50_ms, bl.p50_ms, None),
        ("p99", il.p99_ms, bl.p99_ms, 50.0),
        ("max", il.max_ms, bl.max_ms, None),
    ):
        figures.append(
            Figure(
                f"webhook → 200, {label} @ {RATE:,}/s",
                mine,
                "ms",
                f"bare aiohttp: {theirs:,.1f} ms",
                theirs,
                "-" if target is None else f"≤ {target:,.0f} ms",
                None if target is None else mine <= target,
            )
        )
    print_table(figures)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--serve", choices=("bare", "ingest"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.bootstrap, args.prefix, args.cpu)
        return 0
    asyncio.run(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
