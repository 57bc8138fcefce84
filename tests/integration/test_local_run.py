"""`make run` for real: the printed curls work, and Ctrl-C stops exactly what it started."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.devbroker import free_port, probe
from devtools.local_run import REPO_ROOT, port_in_use

pytestmark = pytest.mark.integration

SERVICE_PORTS = ("INGEST_PORT", "WINDOW_PORT", "DISPATCHER_PORT", "GRAPH_STANDIN_PORT")


class MakeRun:
    """`python -m devtools.local_run` in the background, its output collected line by line."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.local_run", "--rate", "2", *extra],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, limit_s: float = 240.0) -> None:
        deadline = time.monotonic() + limit_s
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.reader.join(5)
                pytest.fail(f"make run never said {text!r}; it said:\n{self.output}")
            time.sleep(0.1)

    def interrupt(self) -> int:
        """Ctrl-C; the exit code (it must exit: a bound, not a speed measurement)."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=90)
        self.reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update({name: str(free_port()) for name in SERVICE_PORTS})
    env["WINDOWGATE_RUN_DIR"] = str(tmp_path / "run")
    return env


@pytest.fixture
def started() -> Iterator[list[MakeRun]]:
    runs: list[MakeRun] = []
    yield runs
    for run in runs:
        run.kill()


def curl(command: str) -> tuple[int, Any]:
    """Do what a printed `curl -s [-H header]... [-d body] URL` does; (status, JSON answer)."""
    args = shlex.split(command)
    assert args[:2] == ["curl", "-s"], command
    headers: dict[str, str] = {}
    data: bytes | None = None
    rest = args[2:]
    while len(rest) > 1:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "-H":
            name, _, text = value.partition(": ")
            headers[name] = text
        elif flag == "-d":
            data = value.encode()
        else:
            pytest.fail(f"unexpected curl option {flag} in {command}")
    request = urllib.request.Request(rest[0], data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_the_printed_curls_work_and_a_broker_it_did_not_start_keeps_running(
    kafka_bootstrap: str, run_env: dict[str, str], started: list[MakeRun]
) -> None:
    run_env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    run = MakeRun(run_env)
    started.append(run)
    run.wait_for("Ctrl-C stops everything")
    assert "left running at the end" in run.output
    send, read, user = (line.strip() for line in run.lines if line.startswith("  curl "))

    status, decision = curl(send)
    assert status == 200, decision
    assert (decision["allowed"], decision["mechanism"]) == (True, "RESPONSE")
    status, again = curl(read)
    assert status == 200
    assert (again["request_id"], again["allowed"]) == (decision["request_id"], True)
    status, state = curl(user)
    assert status == 200
    assert state["known"] is True

    assert run.interrupt() == 0
    assert "Kafka at " + kafka_bootstrap + " left running" in run.output
    assert probe(kafka_bootstrap) is not None
    assert not any(port_in_use(int(run_env[name])) for name in SERVICE_PORTS), run.output
    logs = Path(run_env["WINDOWGATE_RUN_DIR"])
    assert {"ingest.log", "window.log", "dispatcher.log", "graph-standin.log"} <= {
        p.name for p in logs.iterdir()
    }


def test_ctrl_c_while_services_start_stops_them_and_the_broker_it_started(
    run_env: dict[str, str], started: list[MakeRun]
) -> None:
    kafka_port, controller_port = free_port(), free_port()
    run_env["WINDOWGATE_KAFKA_PORT"] = str(kafka_port)
    run_env["WINDOWGATE_KAFKA_CONTROLLER_PORT"] = str(controller_port)
    run = MakeRun(run_env)
    started.append(run)
    run.wait_for("starting the Graph stand-in")

    assert run.interrupt() == 0
    assert "Kafka broker stopped" in run.output
    assert not port_in_use(kafka_port), run.output
    assert not port_in_use(controller_port), run.output
    assert not any(port_in_use(int(run_env[name])) for name in SERVICE_PORTS), run.output
    assert not (Path(run_env["WINDOWGATE_RUN_DIR"]) / "kafka" / "broker.pid").exists()


def test_the_run_labels_users_and_shows_its_broadcasts_in_the_summary(
    kafka_bootstrap: str, run_env: dict[str, str], started: list[MakeRun]
) -> None:
    run_env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    run = MakeRun(run_env, "--broadcast-after", "1", "--every", "2")
    started.append(run)
    run.wait_for("broadcast run-restock to")
    run.wait_for("broadcast run-vip to")
    run.wait_for("  broadcast run-vip ")  # its line in the live summary
    summary = [line for line in run.lines if line.startswith("  broadcast run-restock ")]
    assert summary and "decided" in summary[-1], run.output
    dry_runs = [line for line in run.lines if line.startswith("dry run of run-")]
    assert len(dry_runs) == 2 and all("recipients, would send" in d for d in dry_runs), run.output
    run.wait_for("labels (API): ")  # the simulator labels users through the label API
    counts = [line for line in run.lines if "labels (API): " in line]
    assert not any("labels 4" in line or "labels 5" in line for line in counts), run.output
    assert run.interrupt() == 0
