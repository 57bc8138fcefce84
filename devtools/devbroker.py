"""A real single-node Apache Kafka broker (KRaft), run from Maven Central jars: no Docker needed.

Used by ``make broker`` / ``make broker-stop`` and by the integration-test fixture when no
``KAFKA_BOOTSTRAP_SERVERS`` is given and no Docker engine answers::

    python -m devtools.devbroker start    # 127.0.0.1:9092, data in <repo>/.kafka/, detached
    python -m devtools.devbroker status
    python -m devtools.devbroker stop

    with LocalKafka() as kafka:             # free ports, temporary data dir, stopped on exit
        use(kafka.bootstrap)                # "127.0.0.1:<port>"

The broker classpath is gathered once by ``mvn dependency:copy-dependencies`` on
``tools/kafka/pom.xml`` into ``$WINDOWGATE_KAFKA_HOME`` (default
``~/.cache/windowgate/kafka-4.1.2``). Needs Java 17+ and, for that first fetch, Maven.

Environment: ``WINDOWGATE_KAFKA_HOME`` (jar cache), ``WINDOWGATE_KAFKA_PORT`` (default 9092),
``WINDOWGATE_KAFKA_CONTROLLER_PORT`` (default 9093), ``WINDOWGATE_KAFKA_DATA_DIR`` (default
``<repo>/.kafka``), ``JAVA_HOME``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_READY_TIMEOUT_S",
    "KAFKA_VERSION",
    "BrokerError",
    "LocalKafka",
    "create_topics",
    "ensure_jars",
    "free_port",
    "kafka_home",
    "local_kafka",
    "new_cluster_id",
    "probe",
    "unique_name",
    "wait_ready",
]

KAFKA_VERSION = "4.1.2"
HOST = "127.0.0.1"
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_READY_TIMEOUT_S = 90.0
REPO_ROOT = Path(__file__).resolve().parent.parent
POM_PATH = REPO_ROOT / "tools" / "kafka" / "pom.xml"

# Jars without which kafka.Kafka / StorageTool cannot run: a cache missing one is refetched.
_REQUIRED_JARS = tuple(
    f"{name}-{KAFKA_VERSION}.jar"
    for name in (
        "kafka_2.13",
        "kafka-clients",
        "kafka-server",
        "kafka-server-common",
        "kafka-metadata",
        "kafka-raft",
        "kafka-storage",
        "kafka-storage-api",
        "kafka-group-coordinator",
        "kafka-transaction-coordinator",
        "kafka-share-coordinator",
        "kafka-coordinator-common",
    )
)
_REQUIRED_JAR_PREFIXES = (
    "scala-library-",
    "log4j-api-",
    "log4j-core-",
    "log4j-slf4j2-impl-",
    "slf4j-api-2.",
)
_COMPLETE_MARKER = ".complete"

_T = TypeVar("_T")


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted, started, reached or stopped."""


def _say(message: str) -> None:
    print(f"devbroker: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------------------------


def kafka_home() -> Path:
    """Where the broker jars are cached (``$WINDOWGATE_KAFKA_HOME``)."""
    env = os.environ.get("WINDOWGATE_KAFKA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "windowgate" / f"kafka-{KAFKA_VERSION}"


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def _cache_complete(libs: Path, digest: str) -> bool:
    marker = libs / _COMPLETE_MARKER
    if not marker.is_file() or marker.read_text().strip() != digest:
        return False
    names = {p.name for p in libs.glob("*.jar")}
    return all(jar in names for jar in _REQUIRED_JARS) and all(
        any(n.startswith(prefix) for n in names) for prefix in _REQUIRED_JAR_PREFIXES
    )


def ensure_jars(home: Path | None = None, *, pom: Path = POM_PATH) -> Path:
    """Return the directory holding the broker classpath, running Maven once to fill it."""
    home = home if home is not None else kafka_home()
    libs = home / "libs"
    if not pom.is_file():
        raise BrokerError(f"{pom} not found: the dev broker needs a source checkout of windowgate")
    digest = _pom_digest(pom)
    if _cache_complete(libs, digest):
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same jars
        if _cache_complete(libs, digest):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven (mvn) not found: it is needed once to fetch the Kafka jars "
                f"into {home} (apt-get install maven), or set KAFKA_BOOTSTRAP_SERVERS"
            )
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=home))
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]
        _say(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...")
        started = time.monotonic()
        try:
            result = subprocess.run(
                cmd,
                cwd=pom.parent,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(f"mvn timed out after {exc.timeout:.0f} s: {' '.join(cmd)}") from exc
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            output = (result.stdout + result.stderr).strip()[-4000:]
            raise BrokerError(f"mvn failed (exit {result.returncode}): {' '.join(cmd)}\n{output}")
        (staging / _COMPLETE_MARKER).write_text(digest + "\n")
        if not _cache_complete(staging, digest):
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(f"mvn ran but the classpath in {staging} lacks required jars")
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
        count = len(list(libs.glob("*.jar")))
        _say(f"fetched {count} jars in {time.monotonic() - started:.1f} s")
    return libs


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "java not found: the dev broker needs Java 17+ (apt-get install openjdk-17-jre-headless"
            " or set JAVA_HOME), or set KAFKA_BOOTSTRAP_SERVERS to use an existing broker"
        )
    return java


# --------------------------------------------------------------------------------------------
# Configuration and process
# --------------------------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A cluster id as Kafka's ``Uuid.randomUuid`` makes them: base64url of 16 bytes, 22 chars."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):  # would read as a flag on the StorageTool command line
            return cluster_id


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def unique_name(prefix: str = "t") -> str:
    """A topic / group / app id no other test or earlier run uses: ``<prefix>-<uuid hex>``."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix).strip("-.")[:60] or "t"
    return f"{clean}-{uuid.uuid4().hex[:12]}"


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return f"""\
# Written by devtools.devbroker: a single-node Kafka {KAFKA_VERSION} (KRaft) for development.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={HOST}:{controller_port}
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir / "kraft-data"}
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
"""


def _log4j2_properties(logs_dir: Path) -> str:
    return f"""\
# Written by devtools.devbroker: broker logs go to a file, the console stays quiet.
status = warn
name = windowgate-devbroker
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {logs_dir / "server.log"}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: not written)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path}: empty)"


def _pid_alive(pid: int) -> bool:
    if Path("/proc/self/stat").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")  # a zombie has exited already
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def signal_on_parent_death(
    signum: signal.Signals = signal.SIGTERM,
) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `signum` to the child when its parent dies (no orphan
    brokers or services); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    number = int(signum)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, number, 0, 0, 0)

    return preexec


def _run_coro(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion on a fresh event loop in a worker thread.

    Works whether or not the caller is itself inside a running loop (e.g. an async fixture).
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def _describe_cluster(bootstrap: str, timeout_s: float) -> dict[str, Any]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(timeout_s * 1000))
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        info: dict[str, Any] = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return info
    finally:
        await admin.close()


def probe(bootstrap: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The broker's answer to a Metadata request (brokers, cluster_id, controller_id), or None."""
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout_s, 1.0)):
            pass
    except OSError:
        return None
    try:
        return _run_coro(lambda: _describe_cluster(bootstrap, timeout_s))
    except Exception:  # the broker is not answering yet, for whatever reason
        return None


def wait_ready(
    bootstrap: str,
    *,
    timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    cluster_id: str | None = None,
    alive: Callable[[], bool] | None = None,
    logs: Sequence[Path] = (),
) -> dict[str, Any]:
    """Block until an admin (Metadata) request to ``bootstrap`` lists a broker.

    ``cluster_id``: also require this cluster (so another process on the port does not count).
    ``alive``: give up as soon as it returns False. ``logs``: tails quoted in errors.
    """
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    while True:
        if alive is not None and not alive():
            raise BrokerError(f"the Kafka broker exited during startup\n{_log_tails(logs)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            seen = f"; last answer: {last}" if last else ""
            raise BrokerError(
                f"Kafka at {bootstrap} not ready after {timeout_s:.0f} s{seen}\n{_log_tails(logs)}"
            )
        last = probe(bootstrap, timeout_s=min(5.0, max(remaining, 0.5)))
        if (
            last
            and last.get("brokers")
            and (cluster_id is None or last.get("cluster_id") == cluster_id)
        ):
            return last
        time.sleep(0.2)


def _log_tails(logs: Sequence[Path]) -> str:
    return "\n".join(f"--- tail of {path} ---\n{_tail(path)}" for path in logs)


class _Node:
    """Files of one broker under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.properties = data_dir / "server.properties"
        self.log4j = data_dir / "log4j2.properties"
        self.kraft_data = data_dir / "kraft-data"
        self.logs_dir = data_dir / "logs"
        self.server_log = self.logs_dir / "server.log"
        self.stdout_log = self.logs_dir / "stdout.log"
        self.pid_file = data_dir / "broker.pid"

    @property
    def logs(self) -> tuple[Path, Path]:
        return (self.server_log, self.stdout_log)

    def read_pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is this node's broker."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        cmdline = _cmdline(pid)
        if cmdline and ("kafka.Kafka" not in cmdline or str(self.properties) not in cmdline):
            return None  # the pid was recycled by an unrelated process
        return pid

    def bootstrap(self) -> str | None:
        try:
            text = self.properties.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("advertised.listeners=PLAINTEXT://"):
                return line.split("//", 1)[1].strip()
        return None

    def cluster_id(self) -> str | None:
        try:
            text = (self.kraft_data / "meta.properties").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def prepare(self, java: str, libs: Path, port: int, controller_port: int) -> str:
        """Write the configs and format storage when needed; return the cluster id."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        props = _server_properties(self.data_dir, port, controller_port)
        old = self.properties.read_text() if self.properties.is_file() else None
        if old != props and self.kraft_data.exists():
            # Other ports: the stored single-voter quorum would point at the old controller.
            _say(f"configuration changed: wiping {self.kraft_data}")
            shutil.rmtree(self.kraft_data)
        self.properties.write_text(props)
        self.log4j.write_text(_log4j2_properties(self.logs_dir))
        existing = self.cluster_id()
        if existing is not None:
            return existing
        cluster_id = new_cluster_id()
        cmd = [
            java,
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.properties),
            "--standalone",
        ]
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage failed (exit {result.returncode}): {' '.join(cmd)}\n"
                f"{(result.stdout + result.stderr).strip()[-4000:]}"
            )
        return cluster_id

    def launch(
        self, java: str, libs: Path, heap: tuple[str, str], die_with_parent: bool
    ) -> subprocess.Popen[bytes]:
        cmd = [
            java,
            f"-Xms{heap[0]}",
            f"-Xmx{heap[1]}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.logs_dir}",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.properties),
        ]
        with self.stdout_log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # own process group: stop() signals the whole group
                preexec_fn=signal_on_parent_death() if die_with_parent else None,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc


def _kill_group(pid: int, grace_s: float, wait: Callable[[float], bool]) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if still alive after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    if wait(grace_s):
        return
    _say(f"broker pid {pid} ignored SIGTERM for {grace_s:.0f} s: SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if not wait(10.0):
        raise BrokerError(f"broker pid {pid} survived SIGKILL")


def _wait_gone(pid: int) -> Callable[[float], bool]:
    def wait(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    return wait


# --------------------------------------------------------------------------------------------
# The API the tests use
# --------------------------------------------------------------------------------------------


_TEMP_PREFIX = "windowgate-kafka-"


def _sweep_orphaned_data_dirs() -> None:
    """Remove temporary data dirs left by a killed session (their broker died with it)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_TEMP_PREFIX}*"):
        node = _Node(path)
        if node.pid_file.is_file() and node.read_pid() is None:
            shutil.rmtree(path, ignore_errors=True)


class LocalKafka:
    """A throwaway broker: free ports, a temporary data dir, killed (group and all) by stop().

    ``start()`` blocks until the broker answers an admin request and returns the bootstrap
    string; it may be called from sync code or from inside a running event loop. The broker
    gets SIGTERM if the thread that called start() dies (Linux PR_SET_PDEATHSIG), so a killed
    test run leaves no broker behind: call start() from a long-lived thread (e.g. the main one).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        data_dir: Path | None = None,
        jars_home: Path | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        heap: tuple[str, str] = ("256m", "1g"),
        stop_grace_s: float = 15.0,
    ) -> None:
        self._port = port
        self._controller_port = controller_port
        self._data_dir = data_dir
        self._owns_data_dir = data_dir is None
        self._jars_home = jars_home
        self._ready_timeout_s = ready_timeout_s
        self._heap = heap
        self._stop_grace_s = stop_grace_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._node: _Node | None = None
        self.bootstrap: str = ""
        self.cluster_id: str = ""
        self.startup_s: float = 0.0  # process start to ready, seconds

    def start(self) -> str:
        if self._proc is not None:
            return self.bootstrap
        java = _java()
        libs = ensure_jars(self._jars_home)
        if self._data_dir is None:
            _sweep_orphaned_data_dirs()
            self._data_dir = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX))
        node = self._node = _Node(self._data_dir)
        port = self._port if self._port is not None else free_port()
        controller_port = self._controller_port
        while controller_port is None or controller_port == port:
            controller_port = free_port()
        self.bootstrap = f"{HOST}:{port}"
        atexit.register(self.stop)
        try:
            self.cluster_id = node.prepare(java, libs, port, controller_port)
            started = time.monotonic()
            proc = self._proc = node.launch(java, libs, self._heap, die_with_parent=True)
            wait_ready(
                self.bootstrap,
                timeout_s=self._ready_timeout_s,
                cluster_id=self.cluster_id,
                alive=lambda: proc.poll() is None,
                logs=node.logs,
            )
            self.startup_s = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def stop(self) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:

            def wait(timeout_s: float) -> bool:
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    return False
                return True

            _kill_group(proc.pid, self._stop_grace_s, wait)
        if self._node is not None:
            self._node.pid_file.unlink(missing_ok=True)
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def kill(self) -> None:
        """SIGKILL the broker's process group at once, like a crash (no controlled shutdown).

        The data dir is kept even when this LocalKafka made it: a new LocalKafka with the same
        ports and ``data_dir`` restarts the same cluster on it (``make chaos``).
        """
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._node is not None:
            self._node.pid_file.unlink(missing_ok=True)

    @property
    def logs(self) -> tuple[Path, ...]:
        return self._node.logs if self._node is not None else ()

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def local_kafka(**kwargs: Any) -> Iterator[str]:
    """``with local_kafka() as bootstrap:`` — a LocalKafka for the duration of the block."""
    with LocalKafka(**kwargs) as kafka:
        yield kafka.bootstrap


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create topics with ``partitions`` partitions and wait until every partition has a leader.

    Raises BrokerError if a topic cannot be created (including when it already exists).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    wanted = list(names)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1e3)
    )
    try:
        await admin.start()
        response = await admin.create_topics(
            [
                NewTopic(
                    name=name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    topic_configs=dict(configs or {}),
                )
                for name in wanted
            ],
            timeout_ms=int(timeout_s * 1000),
        )
        errors = [err for err in response.topic_errors if err[1] != 0]
        if errors:
            raise BrokerError(f"creating topics failed: {errors}")
        deadline = time.monotonic() + timeout_s
        while True:
            described = await admin.describe_topics(wanted)
            ready = {
                t["topic"]
                for t in described
                if t["error_code"] == 0
                and len(t["partitions"]) == partitions
                and all(p["leader"] >= 0 for p in t["partitions"])
            }
            if ready >= set(wanted):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"topics {sorted(set(wanted) - ready)} have no leaders yet")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


# --------------------------------------------------------------------------------------------
# make broker / make broker-stop
# --------------------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise BrokerError(f"{name}={value!r} is not a port number") from None


def _default_data_dir() -> Path:
    env = os.environ.get("WINDOWGATE_KAFKA_DATA_DIR")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".kafka"


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cmd_start(data_dir: Path, port: int, controller_port: int, timeout_s: float) -> int:
    node = _Node(data_dir)
    pid = node.read_pid()
    if pid is not None:
        bootstrap = node.bootstrap() or f"{HOST}:{port}"
        wait_ready(bootstrap, timeout_s=timeout_s, alive=lambda: _pid_alive(pid), logs=node.logs)
        _say(f"already running (pid {pid}); logs: {_show(node.server_log)}")
        print(bootstrap)
        return 0
    node.pid_file.unlink(missing_ok=True)
    for p in (port, controller_port):
        if _port_in_use(p):
            raise BrokerError(
                f"port {HOST}:{p} is already in use by another process; free it or set "
                "WINDOWGATE_KAFKA_PORT / WINDOWGATE_KAFKA_CONTROLLER_PORT"
            )
    java = _java()
    libs = ensure_jars()
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster_id = node.prepare(java, libs, port, controller_port)
    started = time.monotonic()
    proc = node.launch(java, libs, ("256m", "1g"), die_with_parent=False)
    bootstrap = f"{HOST}:{port}"
    _say(f"started Kafka {KAFKA_VERSION} (pid {proc.pid}), waiting for it to answer ...")
    try:
        wait_ready(
            bootstrap,
            timeout_s=timeout_s,
            cluster_id=cluster_id,
            alive=lambda: proc.poll() is None,
            logs=node.logs,
        )
    except BaseException:
        _kill_group(proc.pid, 10.0, _wait_gone(proc.pid))
        node.pid_file.unlink(missing_ok=True)
        raise
    _say(
        f"ready at {bootstrap} in {time.monotonic() - started:.1f} s "
        f"(pid {proc.pid}, cluster {cluster_id}); logs: {_show(node.server_log)}; "
        "stop with: make broker-stop"
    )
    print(bootstrap)
    return 0


def cmd_stop(data_dir: Path, grace_s: float) -> int:
    node = _Node(data_dir)
    pid = node.read_pid()
    if pid is None:
        node.pid_file.unlink(missing_ok=True)
        _say("not running")
        return 0
    _say(f"stopping broker pid {pid} ...")
    _kill_group(pid, grace_s, _wait_gone(pid))
    node.pid_file.unlink(missing_ok=True)
    _say("stopped")
    return 0


def cmd_status(data_dir: Path) -> int:
    node = _Node(data_dir)
    pid = node.read_pid()
    if pid is None:
        print("not running")
        return 3
    bootstrap = node.bootstrap() or "?"
    info = probe(bootstrap) if bootstrap != "?" else None
    if info and info.get("brokers"):
        print(f"running: pid {pid}, {bootstrap}, cluster {info.get('cluster_id')}")
        print(f"logs: {_show(node.server_log)}")
        return 0
    print(f"pid {pid} alive but {bootstrap} does not answer; logs: {_show(node.server_log)}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.devbroker",
        description=f"A single-node Apache Kafka {KAFKA_VERSION} (KRaft) for development.",
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--data-dir", type=Path, default=None, help="default: <repo>/.kafka")
    parser.add_argument("--port", type=int, default=None, help="default: 9092")
    parser.add_argument("--controller-port", type=int, default=None, help="default: 9093")
    parser.add_argument("--timeout", type=float, default=DEFAULT_READY_TIMEOUT_S)
    args = parser.parse_args(argv)
    # Probing a broker that is still starting makes aiokafka log connection errors: not news.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        data_dir: Path = (args.data_dir or _default_data_dir()).resolve()
        if args.command == "start":
            port = args.port or _env_int("WINDOWGATE_KAFKA_PORT", DEFAULT_PORT)
            controller_port = args.controller_port or _env_int(
                "WINDOWGATE_KAFKA_CONTROLLER_PORT", DEFAULT_CONTROLLER_PORT
            )
            return cmd_start(data_dir, port, controller_port, args.timeout)
        if args.command == "stop":
            return cmd_stop(data_dir, grace_s=30.0)
        return cmd_status(data_dir)
    except BrokerError as exc:
        _say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
