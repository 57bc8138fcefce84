"""The stack under test, as a black box of processes: its own broker and the five services.

Each service is configured only through the documented environment variables and runs in its own
process group (so a signal reaches any child it forks), with Linux's parent-death signal set so a
killed harness leaves nothing behind. The broker is `devtools.devbroker.LocalKafka` on fixed
free ports and a data dir of the run, so a kill -9 and a restart find the same cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from devtools.devbroker import LocalKafka, free_port, signal_on_parent_death

REPO_ROOT = Path(__file__).resolve().parents[2]

# Inherited variables that would reconfigure a service behind the harness's back (a shared broker,
# a crash hook, another prefix): dropped from the children's environment, except these.
_CONFIG_PREFIXES = ("WINDOWGATE_", "WINDOW_", "INGEST_", "DISPATCHER_", "META_", "GRAPH_", "KAFKA_")
_KEPT = frozenset({"WINDOWGATE_KAFKA_HOME", "WINDOWGATE_SHARED_DIR"})


def clean_environ() -> dict[str, str]:
    """This process's environment without any windowgate setting (children get only ours)."""
    return {k: v for k, v in os.environ.items() if k in _KEPT or not k.startswith(_CONFIG_PREFIXES)}


@dataclass
class Service:
    """One service process; restartable, killable, freezable. `down` marks an intended stop."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    health_url: str
    proc: subprocess.Popen[bytes] | None = None
    down: bool = False
    frozen: bool = False
    starts: int = 0
    unexpected_exits: list[str] = field(default_factory=list)

    def start(self, **override: str) -> None:
        env = {**self.env, **override}
        with self.log.open("ab") as out:
            out.write(f"\n==== chaos: start #{self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=signal_on_parent_death(signal.SIGKILL),  # whatever killed the harness
            )
        self.starts += 1
        self.down = False
        self.frozen = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 of the whole process group, and reap it."""
        self.down = True
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.frozen = False

    def freeze(self) -> None:
        self.frozen = True
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)
        self.frozen = False

    def reap_unexpected(self) -> bool:
        """True (and noted) when the process ended although nobody stopped it."""
        if self.down or self.proc is None or self.proc.poll() is None:
            return False
        tail = self.tail(600).strip().splitlines()
        last = tail[-1][:200] if tail else ""
        self.unexpected_exits.append(f"exit {self.proc.returncode} at {time.time():.0f}: {last}")
        self.down = True
        return True

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def healthy(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(
                self.health_url, timeout=aiohttp.ClientTimeout(total=3)
            ) as answer:
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False


class Broker:
    """The run's own Kafka: fixed ports and data dir, so it can be killed and restarted.

    LocalKafka ties the broker's life to the thread that started it (PR_SET_PDEATHSIG), so every
    start runs on one long-lived thread of this object's own.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chaos-kafka")
        self._kafka: LocalKafka | None = None
        self.starts = 0

    async def _on_thread(self, fn: Callable[[], None]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _start(self) -> None:
        kafka = LocalKafka(
            port=self.port,
            controller_port=self.controller_port,
            data_dir=self.data_dir,
            ready_timeout_s=120,
        )
        kafka.start()
        self._kafka = kafka
        self.starts += 1

    async def start(self) -> None:
        await self._on_thread(self._start)

    async def kill(self) -> None:
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            await self._on_thread(kafka.kill)

    def close(self) -> None:
        """Kill the broker (if up) and let its thread end; safe to call more than once."""
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            self._thread.submit(kafka.kill).result(timeout=30)
        self._thread.shutdown(wait=True)


def service_env(
    base: Mapping[str, str], bootstrap: str, prefix: str, partitions: int, extra: Mapping[str, str]
) -> dict[str, str]:
    return {
        **base,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WINDOWGATE_TOPIC_PREFIX": prefix,
        "WINDOWGATE_PARTITIONS": str(partitions),
        **extra,
    }
