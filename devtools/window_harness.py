"""A window worker in a child process, for the integration tests, the benchmark and demos.

worker = WindowProcess(bootstrap, prefix="t1.", port=18081, data_dir=d, log=d / "log")
worker.start()
await worker.wait_ready()          # /healthz answers 200: tables recovered, server up
status, body = await worker.get("/v1/pages/P/users/U")
worker.kill()                      # SIGKILL: no goodbye to the group, no flush
worker.stop()                      # SIGTERM and wait
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerExited(RuntimeError):
    """The child process ended while we waited for it; the message holds its last log lines."""


class WindowProcess:
    def __init__(
        self,
        bootstrap: str,
        *,
        prefix: str,
        port: int,
        data_dir: Path,
        log: Path,
        partitions: int = 4,
        token: str = "window-test-token",
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.token = token
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "WINDOWGATE_TOPIC_PREFIX": prefix,
            "WINDOWGATE_PARTITIONS": str(partitions),
            "WINDOWGATE_API_TOKENS": token,
            "WINDOW_PORT": str(port),
            "WINDOW_HOST": "127.0.0.1",
            "WINDOW_ADVERTISED_URL": self.url,
            "WINDOW_DATA_DIR": str(data_dir),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WindowProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.window", "worker"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=self.env,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if not self.alive:
            code = None if self.proc is None else self.proc.returncode
            raise WorkerExited(f"window worker {self.url} exited ({code}):\n{self.tail()}")

    async def get(self, path: str) -> tuple[int, Any, Mapping[str, str]]:
        """(status, JSON body or None, headers) of one authenticated GET."""
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{self.url}{path}", headers=headers) as answer,
        ):
            raw = await answer.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            return answer.status, body, dict(answer.headers)

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            try:
                status, _, _ = await self.get("/healthz")
                if status == 200:
                    return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} not ready after {timeout_s} s:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to flush, commit or leave the group."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    async def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait without blocking the loop (SIGKILL after `timeout_s`)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                break
            await asyncio.sleep(0.1)
        return self.proc.returncode

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout_s`); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
