"""`make run` as a newcomer meets it: one-line errors naming the variable, a curl that works."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import local_run
from devtools.local_run import Port, RunError, port_problems, previous_run, try_it
from schemas.request import request_from_wire
from services.common.settings import SettingsError


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_port_in_use_is_one_line_naming_the_variable(busy_port: int) -> None:
    ports = [Port("Graph stand-in", free_port(), "GRAPH_STANDIN_PORT")]
    ports.append(Port("ingest", busy_port, "INGEST_PORT"))
    [problem] = port_problems(ports)
    assert "\n" not in problem
    assert problem.startswith(f"port {busy_port} (ingest) is already in use")
    suggested = int(problem.rsplit("INGEST_PORT=", 1)[1].split()[0])
    assert suggested != busy_port
    assert problem.endswith("make run")


def test_free_ports_are_no_problem_and_one_port_twice_is() -> None:
    port = free_port()
    assert port_problems([Port("ingest", port, "INGEST_PORT")]) == []
    twice = [Port("window", port, "WINDOW_PORT"), Port("dispatcher", port, "DISPATCHER_PORT")]
    assert port_problems(twice) == [
        f"DISPATCHER_PORT and WINDOW_PORT are both {port}: give each its own port"
    ]


def test_each_port_has_its_own_variable() -> None:
    env = {
        "INGEST_PORT": "18080",
        "WINDOW_PORT": "18081",
        "DISPATCHER_PORT": "18082",
        "GRAPH_STANDIN_PORT": "18090",
        "WINDOWGATE_KAFKA_PORT": "19092",
        "WINDOWGATE_KAFKA_CONTROLLER_PORT": "19093",
    }
    ports = local_run.service_ports(env) + local_run.broker_ports(env)
    assert {p.variable: p.port for p in ports} == {k: int(v) for k, v in env.items()}
    with pytest.raises(SettingsError, match="GRAPH_STANDIN_PORT must be between 1 and 65535"):
        local_run.service_ports({"GRAPH_STANDIN_PORT": "70000"})


def test_the_printed_curls_send_a_valid_request_and_read_it_back() -> None:
    lines = try_it("http://127.0.0.1:8082", "http://127.0.0.1:8081")
    assert local_run.API_TOKEN in lines[0]
    curls = [shlex.split(line) for line in lines if line.lstrip().startswith("curl ")]
    send, read, user = curls
    assert send[-1] == "http://127.0.0.1:8082/v1/messages"
    headers = [send[i + 1] for i, arg in enumerate(send) if arg == "-H"]
    assert f"Authorization: Bearer {local_run.API_TOKEN}" in headers
    request = request_from_wire(json.loads(send[send.index("-d") + 1]))
    assert (request.page_id, request.user_id) == (local_run.TRY_PAGE, local_run.TRY_USER)
    assert read[-1] == f"http://127.0.0.1:8082/v1/decisions/{request.request_id}"
    assert user[-1] == (
        f"http://127.0.0.1:8081/v1/pages/{local_run.TRY_PAGE}/users/{local_run.TRY_USER}"
    )


def test_the_run_folder_is_reused_but_a_foreign_one_is_never_emptied(tmp_path: Path) -> None:
    assert previous_run(tmp_path / "absent") is None
    assert previous_run(tmp_path) is None
    (tmp_path / local_run.RUN_STATE).write_text('{"bootstrap": "b:1", "prefix": "p."}')
    assert previous_run(tmp_path) == {"bootstrap": "b:1", "prefix": "p."}
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(RunError, match="not empty and was not made by make run"):
        previous_run(foreign)


def test_last_words_reads_the_message_of_a_json_log(tmp_path: Path) -> None:
    log = tmp_path / "ingest.log"
    log.write_text('{"level":"info","msg":"starting"}\n{"level":"critical","msg":"no secret"}\n')
    assert local_run.last_words(log) == "no secret"
    log.write_text("Traceback ...\nOSError: [Errno 98] address in use\n")
    assert local_run.last_words(log) == "OSError: [Errno 98] address in use"


def test_a_busy_port_stops_make_run_before_it_starts_anything(
    busy_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    for name in ("WINDOWGATE_KAFKA_PORT", "WINDOWGATE_KAFKA_CONTROLLER_PORT", "WINDOW_PORT"):
        monkeypatch.setenv(name, str(free_port()))
    monkeypatch.setenv("DISPATCHER_PORT", str(free_port()))
    monkeypatch.setenv("GRAPH_STANDIN_PORT", str(free_port()))
    monkeypatch.setenv("INGEST_PORT", str(busy_port))
    monkeypatch.setenv("WINDOWGATE_RUN_DIR", str(tmp_path / "run"))
    assert local_run.main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"make run: port {busy_port} (ingest) is already in use")
    assert "INGEST_PORT=" in line
    assert not (tmp_path / "run").exists()


def test_a_run_folder_in_use_by_a_live_make_run_is_left_alone(tmp_path: Path) -> None:
    """Two make runs in one checkout: the second must not wipe the first one's logs and topics."""
    code = "import time; print('up', flush=True); time.sleep(60)"
    other = subprocess.Popen(
        [sys.executable, "-c", code, "devtools.local_run"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        assert other.stdout.readline() == "up\n"  # its command line is in /proc from now on
        state = {"bootstrap": "b:1", "prefix": "p.", "pid": other.pid}
        (tmp_path / local_run.RUN_STATE).write_text(json.dumps(state))
        with pytest.raises(RunError, match=f"another make run \\(pid {other.pid}\\)"):
            previous_run(tmp_path)
    finally:
        other.kill()
        other.wait()
    assert previous_run(tmp_path) == state
