"""`make run`: the whole gateway on one machine, with Meta played by local stand-ins.

Uses the Kafka broker at KAFKA_BOOTSTRAP_SERVERS or an already running `make broker` (and leaves it
running), else starts one for the run; then a Graph API stand-in, the three services, and a traffic
simulator that posts signed, Meta-shaped webhooks to ingest and send requests to the dispatcher's
HTTP API. Prints the API token with ready `curl` commands, then a live summary every few seconds
until Ctrl-C (or `--duration`), and stops everything it started: Ctrl-C works at any moment.

One folder per checkout, `.windowgate/run/` (WINDOWGATE_RUN_DIR), emptied at start: a log per
service, the pages file, the window's data and the broker it started (`kafka/`). The ports
(INGEST_PORT, WINDOW_PORT, DISPATCHER_PORT, GRAPH_STANDIN_PORT, and WINDOWGATE_KAFKA_PORT /
WINDOWGATE_KAFKA_CONTROLLER_PORT for a broker it starts) are checked before anything starts.

The simulated users also opt in to OTN topics (the lists grow) and get labels through the label
API (`PUT /v1/pages/{p}/users/{u}/labels/{label}`, as an operator's tool would label them); after
`--broadcast-after` seconds the run dry-runs and starts two broadcasts (a topic's token holders, a
label) and the summary shows them progressing.

With real credentials (META_APP_SECRET, META_VERIFY_TOKEN, GRAPH_API_URL, WINDOWGATE_PAGES) run the
services themselves (`python -m services.ingest`, `python -m services.window worker`,
`python -m services.dispatcher`) instead: this script is for seeing it work without Meta.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from services.common.runtime import now_ms
from services.common.settings import Settings, SettingsError, env_whole
from services.ingest.config import DEMO_APP_SECRET
from services.ingest.signature import sign
from windowgate.cli import progress_line

REPO_ROOT = Path(__file__).resolve().parents[1]
GRAPH_STANDIN_MODULE = "devtools.graph_standin"
"""The Graph API stand-in by module path, named here only (a dev package may take it later)."""
API_TOKEN = "local-run-token"
PAGES = {
    "682498171943165": {"access_token": "page-token-shoes", "human_agent": True, "region": "US"},
    "542998526103632": {"access_token": "page-token-books", "region": "FR"},
}
TOPICS = ["back-in-stock", "price-drop"]
LABELS = ["vip", "white-wine", "red-wine"]
LABEL_SHARE = 0.3
"""The share of the users who write that the page labels (by what they wrote about)."""
BROADCASTS = [
    {
        "broadcast_id": "run-restock",
        "purpose": "auto",
        "message": {"text": "Your size is back in stock"},
        "audience": {"topic": "back-in-stock"},
    },
    {
        "broadcast_id": "run-vip",
        "purpose": "auto",
        "message": {"text": "A tasting for our VIPs on Friday"},
        "audience": {"labels_any": ["vip"], "labels_none": ["red-wine"]},
    },
]
"""What `make run` broadcasts on TRY_PAGE after --broadcast-after seconds."""
TRY_PAGE = "682498171943165"
TRY_USER = "1000000000000001"
"""A user who writes to TRY_PAGE as the run starts, so the printed curl finds the window open."""
RUN_STATE = "run.json"
HEALTHY_WITHIN_S = 120.0
STOP_GRACE_S = 20.0
DEFAULT_KAFKA_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_STANDIN_PORT = 8090


class RunError(Exception):
    """Why `make run` cannot go on, in one line a person can act on."""


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    variable: str


def service_ports(env: Mapping[str, str]) -> list[Port]:
    """The ports of the stand-in and the services, each with the variable that moves it."""
    settings = Settings.from_env(env)
    standin = env_whole(env, "GRAPH_STANDIN_PORT", DEFAULT_STANDIN_PORT, 1, 65535)
    return [
        Port("Graph stand-in", standin, "GRAPH_STANDIN_PORT"),
        Port("ingest", settings.ingest_port, "INGEST_PORT"),
        Port("window", settings.window_port, "WINDOW_PORT"),
        Port("dispatcher", settings.dispatcher_port, "DISPATCHER_PORT"),
    ]


def broker_ports(env: Mapping[str, str]) -> list[Port]:
    """The ports of a broker `make run` starts itself (the same variables as `make broker`)."""
    return [
        Port(
            "Kafka",
            env_whole(env, "WINDOWGATE_KAFKA_PORT", DEFAULT_KAFKA_PORT, 1, 65535),
            "WINDOWGATE_KAFKA_PORT",
        ),
        Port(
            "Kafka controller",
            env_whole(env, "WINDOWGATE_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT, 1, 65535),
            "WINDOWGATE_KAFKA_CONTROLLER_PORT",
        ),
    ]


def port_in_use(port: int) -> bool:
    """Whether a program listens on `port` (loopback or any address), as a server would find."""
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_problems(ports: Sequence[Port]) -> list[str]:
    """One line per port that cannot be used, naming the variable to change."""
    problems: list[str] = []
    seen: dict[int, Port] = {}
    for p in ports:
        if p.port in seen:
            problems.append(
                f"{p.variable} and {seen[p.port].variable} are both {p.port}: "
                "give each its own port"
            )
        elif port_in_use(p.port):
            problems.append(
                f"port {p.port} ({p.name}) is already in use by another program: stop it, or "
                f"choose another port, e.g. {p.variable}={_free_port()} make run"
            )
        seen.setdefault(p.port, p)
    return problems


def try_it(dispatcher: str, window: str) -> list[str]:
    """What to type to send one message, read its decision and the user's state."""
    auth = f"Authorization: Bearer {API_TOKEN}"
    request = {
        "request_id": "try-1",
        "page_id": TRY_PAGE,
        "user_id": TRY_USER,
        "purpose": "auto",
        "message": {"text": "Hello from windowgate"},
    }
    body = json.dumps(request, separators=(",", ":"))
    send = ["curl", "-s", "-H", auth, "-H", "Content-Type: application/json", "-d", body]
    return [
        f"API token: {API_TOKEN} (WINDOWGATE_API_TOKENS); user {TRY_USER} of page {TRY_PAGE} "
        "has just written, so the 24 h window is open.",
        "Send them one message:",
        "  " + shlex.join([*send, f"{dispatcher}/v1/messages"]),
        "Read its decision:",
        "  " + shlex.join(["curl", "-s", "-H", auth, f"{dispatcher}/v1/decisions/try-1"]),
        "What the gateway knows about the user, and what it may send them now:",
        "  "
        + shlex.join(["curl", "-s", "-H", auth, f"{window}/v1/pages/{TRY_PAGE}/users/{TRY_USER}"]),
    ]


def show(path: Path) -> str:
    """A path as short as a person can use it from where they are."""
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def last_words(log: Path) -> str:
    """The last line a service logged, its message only when it is a JSON log line."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    if not lines:
        return "nothing logged"
    line = lines[-1]
    with contextlib.suppress(ValueError):
        entry = json.loads(line)
        if isinstance(entry, dict) and "msg" in entry:
            return str(entry["msg"]).splitlines()[0]
    return line.strip()[:300]


class Child:
    """One process of the run, its output in a log file, in a session of its own (so the terminal's
    Ctrl-C reaches only `make run`, which stops it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
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
        code = self.proc.poll()
        if code is not None:
            raise RunError(
                f"{self.name} exited (code {code}): {last_words(self.log)}; log: {show(self.log)}"
            )

    def terminate(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    async def wait(self, deadline: float) -> None:
        """Until it has exited; SIGKILL (the whole group) at `deadline`."""
        try:
            await asyncio.to_thread(self.proc.wait, max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)


async def broker_answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2)
    except (OSError, ValueError, TimeoutError):
        return False
    writer.close()
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


async def _devbroker(*args: str) -> tuple[int, str]:
    """`python -m devtools.devbroker ARGS`, in its own session; (exit code, its stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.devbroker",
        *args,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    said: list[str] = []
    try:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            said.append(line)
            if "fetch" in line:  # the first run downloads the jars: say why it takes a while
                print(f"  {line.removeprefix('devbroker: ')}", flush=True)
        return await proc.wait(), "\n".join(said)
    except asyncio.CancelledError:
        # Ctrl-C while it starts: SIGINT makes it kill the broker it launched before it exits.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 30)
        raise


@dataclass
class Broker:
    bootstrap: str
    data_dir: Path | None = None
    """Set when this run started the broker (and so stops it)."""

    async def start(self, kafka: Port, controller: Port) -> None:
        """Start a broker in `data_dir` (cancellable: Ctrl-C stops the half-started broker)."""
        assert self.data_dir is not None
        args = ["--data-dir", str(self.data_dir), "--port", str(kafka.port)]
        code, said = await _devbroker("start", *args, "--controller-port", str(controller.port))
        if code != 0:
            errors = [line for line in said.splitlines() if "error:" in line] or said.splitlines()
            reason = (errors[-1] if errors else f"exit code {code}").split("error: ", 1)[-1]
            raise RunError(f"could not start Kafka: {reason}")

    async def stop(self) -> str:
        if self.data_dir is None:
            return f"Kafka at {self.bootstrap} left running (make run did not start it)"
        await _devbroker("stop", "--data-dir", str(self.data_dir))
        return "Kafka broker stopped"


async def delete_topics(bootstrap: str, prefix: str) -> int:
    """Delete the topics of a run (names starting with `prefix`) from a broker it did not start."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names, timeout_ms=10_000)
        return len(names)
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def run_dir_from_env(env: Mapping[str, str]) -> Path:
    """WINDOWGATE_RUN_DIR, default `.windowgate/run` in the checkout."""
    return Path(env.get("WINDOWGATE_RUN_DIR") or REPO_ROOT / ".windowgate" / "run").resolve()


def previous_run(run_dir: Path) -> dict[str, Any] | None:
    """What the last run in `run_dir` recorded; None for an empty folder; refuses a foreign one."""
    state_file = run_dir / RUN_STATE
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    if not state_file.is_file():
        raise RunError(
            f"{show(run_dir)} is not empty and was not made by make run: "
            "empty it or set WINDOWGATE_RUN_DIR to another folder"
        )
    try:
        state = json.loads(state_file.read_text())
    except (ValueError, OSError):
        return {}
    if not isinstance(state, dict):
        return {}
    pid = state.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and running_make_run(pid):
        raise RunError(
            f"another make run (pid {pid}) is using {show(run_dir)}: stop it first, "
            "or give this one its own WINDOWGATE_RUN_DIR and ports"
        )
    return state


def running_make_run(pid: int) -> bool:
    """Whether `pid` is a live `devtools.local_run` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"devtools.local_run" in cmdline


def empty_run_dir(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


async def clean_run_dir(run_dir: Path, bootstrap: str) -> None:
    """Undo what a previous run left running (a killed `make run`), then empty the folder."""
    state = previous_run(run_dir)
    if state is not None:
        kafka_dir = run_dir / "kafka"
        if (kafka_dir / "broker.pid").is_file():
            await _devbroker("stop", "--data-dir", str(kafka_dir))
        elif state.get("bootstrap") == bootstrap and state.get("prefix"):
            with contextlib.suppress(Exception):
                await delete_topics(bootstrap, str(state["prefix"]))
    empty_run_dir(run_dir)


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
            raise RunError(
                f"{child.name} not healthy at {url} after {limit_s:.0f} s: "
                f"{last_words(child.log)}; log: {show(child.log)}"
            )
        await asyncio.sleep(0.3)


async def wait_known(
    session: aiohttp.ClientSession, window: Child, url: str, limit_s: float
) -> None:
    """Until the window worker has folded the try user's first message (the curl needs it)."""
    query = f"{url}/v1/pages/{TRY_PAGE}/users/{TRY_USER}"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        window.check()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(query, headers=headers) as answer:
                body = await answer.json(content_type=None)
                if answer.status == 200 and isinstance(body, dict) and body.get("known"):
                    return
        await asyncio.sleep(0.2)
    raise RunError(
        f"the window worker did not fold a webhook within {limit_s:.0f} s: "
        f"{last_words(window.log)}; log: {show(window.log)}"
    )


def webhook(page: str, element: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A Meta-shaped webhook body with one messaging element, and its signed headers."""
    body = orjson.dumps(
        {"object": "page", "entry": [{"id": page, "time": now_ms(), "messaging": [element]}]}
    )
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(DEMO_APP_SECRET.encode(), body),
    }
    return body, headers


class Simulator:
    """Users who write, opt in to OTN topics and go quiet; services that ask to message them."""

    def __init__(self, ingest: str, dispatcher: str, rng: random.Random) -> None:
        self.ingest = ingest
        self.dispatcher = dispatcher
        self.rng = rng
        self.users: dict[str, list[str]] = {page: [] for page in PAGES}
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.broadcasts: dict[str, str] = {}  # broadcast_id → what it was started with
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

    async def post(self, session: aiohttp.ClientSession, page: str, element: dict[str, Any]) -> int:
        body, headers = webhook(page, element)
        async with session.post(f"{self.ingest}/webhook", data=body, headers=headers) as answer:
            return answer.status

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
        status = await self.post(session, page, self._element(page, user, now_ms() - age_ms))
        self.counts[f"webhooks {status}"] += 1
        if self.rng.random() < LABEL_SHARE:
            await self.label(session, page, user, self.rng.choice(LABELS))

    async def label(self, session: aiohttp.ClientSession, page: str, user: str, label: str) -> None:
        """Put `label` on the user through the label API, as an operator's tool would; the
        summary counts the answers (an error shows as `labels <status>`)."""
        url = f"{self.dispatcher}/v1/pages/{page}/users/{user}/labels/{label}"
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with session.put(url, headers=headers) as answer:
            ok = answer.status == 200
            self.counts["labels (API)" if ok else f"labels {answer.status}"] += 1

    async def start_broadcasts(self, session: aiohttp.ClientSession) -> list[str]:
        """Dry-run, then start, each of BROADCASTS on TRY_PAGE; one line per step."""
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        said: list[str] = []
        for spec in BROADCASTS:
            body = {**spec, "page_id": TRY_PAGE}
            broadcast_id = str(spec["broadcast_id"])
            async with session.post(
                f"{self.dispatcher}/v1/broadcasts",
                json={**body, "dry_run": True},
                headers=headers,
            ) as answer:
                dry = await answer.json(content_type=None)
            if answer.status == 200:
                said.append(
                    f"dry run of {broadcast_id}: {dry.get('audience')} recipients, would send "
                    f"{dry.get('by_mechanism')}, refused {dry.get('refused')}"
                )
            else:
                said.append(f"dry run of {broadcast_id}: {answer.status} {dry.get('detail')}")
            async with session.post(
                f"{self.dispatcher}/v1/broadcasts", json=body, headers=headers
            ) as answer:
                created = await answer.json(content_type=None)
            if answer.status in (200, 202):
                self.broadcasts[broadcast_id] = orjson.dumps(spec["audience"]).decode()
                said.append(
                    f"broadcast {broadcast_id} to {self.broadcasts[broadcast_id]} started; "
                    f"follow it: windowgate broadcast status {broadcast_id} --follow "
                    f"--url {self.dispatcher} --token {API_TOKEN}"
                )
            else:
                said.append(f"broadcast {broadcast_id}: {answer.status} {created.get('detail')}")
        return said

    async def broadcast_lines(self, session: aiohttp.ClientSession) -> list[str]:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        lines = []
        for broadcast_id, audience in self.broadcasts.items():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(
                    f"{self.dispatcher}/v1/broadcasts/{broadcast_id}", headers=headers
                ) as answer:
                    view = await answer.json(content_type=None)
                if answer.status == 200 and isinstance(view, dict):
                    reported = view.get("partitions", {}).get("reported", 0)
                    lines.append(
                        f"  broadcast {broadcast_id} {audience}: {progress_line(view, 20)}"
                        + ("" if reported else " (no window partition has reported yet)")
                    )
        return lines

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
    """The counts of the traffic, the decisions, the Graph calls and each broadcast's progress."""
    stats: dict[str, Any] = {}
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(f"{standin}/_standin/stats") as answer:
            stats = await answer.json(content_type=None)
    lines = [
        f"--- windowgate, {time.monotonic() - started:5.0f} s ---",
        "  " + (", ".join(f"{k}: {v}" for k, v in sorted(sim.counts.items())) or "no traffic yet"),
        "  decisions: "
        + (", ".join(f"{k} ×{v}" for k, v in sim.reasons.most_common(6)) or "none yet"),
        f"  Graph stand-in: {stats.get('calls', 0)} calls, double-used tokens: "
        f"{stats.get('double_used_tokens', 0)}",
        *await sim.broadcast_lines(session),
    ]
    return "\n".join(lines)


@dataclass
class Run:
    """What one `make run` started, so that it stops exactly that."""

    run_dir: Path
    prefix: str
    ports: list[Port]
    broker: Broker | None = None
    kafka_ports: list[Port] | None = None
    """Set when the run starts its own broker, on these ports."""
    children: tuple[Child, ...] = ()

    async def start_broker(self) -> None:
        if self.broker is None or self.kafka_ports is None:
            return
        print(f"Kafka: starting a broker at {self.broker.bootstrap} for this run…", flush=True)
        began = time.monotonic()
        await self.broker.start(*self.kafka_ports)
        print(f"Kafka: ready in {time.monotonic() - began:.0f} s", flush=True)

    async def stop(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            child.terminate()
        for child in self.children:
            await child.wait(deadline)
        done = []
        if self.children:
            done.append("services stopped")
        if self.broker is not None:
            if self.broker.data_dir is None:
                with contextlib.suppress(Exception):
                    count = await delete_topics(self.broker.bootstrap, self.prefix)
                    done.append(f"its {count} topic{'' if count == 1 else 's'} deleted")
            done.append(await self.broker.stop())
        done.append(f"logs in {show(self.run_dir)}/")
        print("; ".join(done), flush=True)


async def run(args: argparse.Namespace) -> int:
    """Start, serve until Ctrl-C / SIGTERM / --duration, stop what was started; the exit code."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = False

    def on_signal() -> None:
        nonlocal stopping
        if not stopping and task is not None:
            stopping = True
            print("\nstopping…", flush=True)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    current: Run | None = None
    try:
        current = await prepare(os.environ)
        await current.start_broker()
        await serve(args, current)
    except asyncio.CancelledError:
        pass
    except RunError as exc:
        for line in str(exc).splitlines():
            print(f"make run: {line}", file=sys.stderr, flush=True)
        return 2
    finally:
        stopping = True  # a second Ctrl-C must not interrupt the stopping
        if current is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await current.stop()
    return 0


async def prepare(env: Mapping[str, str]) -> Run:
    """Check everything that can be checked before starting anything; clean the run folder."""
    try:
        ports = service_ports(env)
        kafka_ports = broker_ports(env)
    except SettingsError as exc:
        raise RunError(str(exc)) from None
    run_dir = run_dir_from_env(env)
    given = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    bootstrap = given or f"127.0.0.1:{kafka_ports[0].port}"
    external = await broker_answers(bootstrap)
    if not external and given:
        raise RunError(
            f"no Kafka broker answers at {given} (KAFKA_BOOTSTRAP_SERVERS): start it, "
            "or unset KAFKA_BOOTSTRAP_SERVERS and make run starts one"
        )
    problems = port_problems(ports if external else [*ports, *kafka_ports])
    if problems:
        raise RunError("\n".join(problems))
    await clean_run_dir(run_dir, bootstrap)
    current = Run(run_dir, f"windowgate.run{int(time.time())}.", ports)
    (run_dir / RUN_STATE).write_text(
        json.dumps({"bootstrap": bootstrap, "prefix": current.prefix, "pid": os.getpid()})
    )
    print(f"windowgate: make run; logs in {show(run_dir)}/ (one file per service)", flush=True)
    if external:
        print(
            f"Kafka: the broker already running at {bootstrap} (left running at the end)",
            flush=True,
        )
        current.broker = Broker(bootstrap)
    else:
        current.broker = Broker(bootstrap, run_dir / "kafka")
        current.kafka_ports = kafka_ports
    return current


async def serve(args: argparse.Namespace, current: Run) -> None:
    """The stand-in, the services and the simulated traffic, until cancelled or --duration."""
    run_dir = current.run_dir
    assert current.broker is not None
    bootstrap = current.broker.bootstrap
    pages_file = run_dir / "pages.json"
    pages_file.write_bytes(orjson.dumps({"pages": PAGES}))
    standin_port, ingest_port, window_port, dispatcher_port = (p.port for p in current.ports)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WINDOWGATE_TOPIC_PREFIX": current.prefix,
        "WINDOWGATE_PARTITIONS": "4",
        "WINDOWGATE_PAGES": str(pages_file),
        "WINDOWGATE_API_TOKENS": API_TOKEN,
        "WINDOWGATE_DEMO": "1",
        "GRAPH_API_URL": f"http://127.0.0.1:{standin_port}",
        "INGEST_HOST": args.host,
        "INGEST_PORT": str(ingest_port),
        "WINDOW_PORT": str(window_port),
        "WINDOW_HOST": args.host,
        "WINDOW_ADVERTISED_URL": f"http://127.0.0.1:{window_port}",
        "DISPATCHER_PORT": str(dispatcher_port),
    }
    py = sys.executable
    standin_argv = [py, "-m", GRAPH_STANDIN_MODULE, "--port", str(standin_port)]
    standin_argv += ["--pages", str(pages_file), "--rate", "300"]
    specs = [
        ("graph-standin", standin_argv, standin_port, "/_standin/stats"),
        ("ingest", [py, "-m", "services.ingest"], ingest_port, "/healthz"),
        ("window", [py, "-m", "services.window", "worker"], window_port, "/healthz"),
        ("dispatcher", [py, "-m", "services.dispatcher"], dispatcher_port, "/healthz"),
    ]
    print("starting the Graph stand-in, ingest, window and dispatcher…", flush=True)
    began = time.monotonic()
    children = []
    for name, argv, _, _ in specs:
        children.append(Child(name, argv, env, run_dir / f"{name}.log"))
        current.children = tuple(children)
    urls = {name: f"http://127.0.0.1:{port}" for name, _, port, _ in specs}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def up(child: Child, health: str) -> None:
            await wait_healthy(session, child, urls[child.name] + health, HEALTHY_WITHIN_S)
            print(f"  {child.name:<14} {urls[child.name]}", flush=True)

        await asyncio.gather(*(up(c, s[3]) for c, s in zip(children, specs, strict=True)))
        sim = Simulator(urls["ingest"], urls["dispatcher"], random.Random(args.seed))
        opener = {"sender": {"id": TRY_USER}, "recipient": {"id": TRY_PAGE}, "timestamp": now_ms()}
        opener["message"] = {"mid": "m_run_try", "text": "Hi, is my order on its way?"}
        status = await sim.post(session, TRY_PAGE, opener)
        if status != 200:
            raise RunError(f"ingest answered {status} to a signed webhook; log: {show(run_dir)}")
        await wait_known(session, children[2], urls["window"], HEALTHY_WITHIN_S)
        print(f"ready in {time.monotonic() - began:.0f} s", flush=True)
        print("\n".join(try_it(urls["dispatcher"], urls["window"])), flush=True)
        print(
            f"Simulated users now write and get messages ({args.rate} webhooks/s); "
            f"a summary every {args.every:g} s; Ctrl-C stops everything.",
            flush=True,
        )
        started = time.monotonic()
        next_summary = started + args.every
        broadcast_at = started + args.broadcast_after if args.broadcast_after > 0 else None
        try:
            while not args.duration or time.monotonic() - started < args.duration:
                if broadcast_at is not None and time.monotonic() >= broadcast_at:
                    broadcast_at = None
                    print("\n".join(await sim.start_broadcasts(session)), flush=True)
                for child in children:
                    child.check()
                await asyncio.gather(*(sim.post_webhook(session) for _ in range(args.rate)))
                await asyncio.gather(
                    *(sim.send_request(session) for _ in range(max(1, args.rate // 2)))
                )
                if time.monotonic() >= next_summary:
                    print(await summary(session, sim, urls["graph-standin"], started), flush=True)
                    next_summary += args.every
                await asyncio.sleep(1.0)
        finally:
            if time.monotonic() - started > 1.0:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    print(await summary(session, sim, urls["graph-standin"], started), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=20, help="webhooks per second")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between summaries")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--broadcast-after",
        type=float,
        default=30.0,
        help="seconds of traffic before the two broadcasts start (0: none)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address ingest and window listen on (0.0.0.0 in a container)",
    )
    args = parser.parse_args(argv)
    # Probing for a broker makes aiokafka log connection errors: none of them is news here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:  # Ctrl-C before the event loop took over: nothing started yet
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
