"""The real stack as separate processes: the simulator, gunicorn-served Flask, and a Celery worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import BinaryIO

BIN = Path(sys.executable).parent


def free_port() -> int:
    """Return a loopback port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: Any = None, *, timeout: float = 60) -> tuple[int, dict[str, str], Any]:
    """Send one JSON request; return status, headers and the decoded body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


@dataclass
class Stack:
    """Processes started for one test module; stopped together."""

    env: dict[str, str]
    log_dir: Path
    web_port: int = field(default_factory=free_port)
    sim_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_files: list[BinaryIO] = field(default_factory=list)

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def sim(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def start(self) -> None:
        self.env["OPENAI_BASE_URL"] = f"{self.sim}/v1"
        self._spawn("simulator", [str(BIN / "model-router"), "simulate", "--port", str(self.sim_port)])
        self._spawn(
            "web",
            [str(BIN / "gunicorn"), "--worker-class", "gevent", "--workers", "2", "--bind",
             f"127.0.0.1:{self.web_port}", "web:create_app()"],
        )  # fmt: skip
        self._spawn(
            "worker",
            [str(BIN / "celery"), "-A", "worker.celery_app:celery_app", "worker", "--pool", "threads",
             "--concurrency", "8", "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
        )  # fmt: skip
        self._wait_until_ready()

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop())
        self.log_files.append(log)
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_until_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up:\n{self.logs(name)}")
            try:
                status, _, body = http("GET", f"{self.web}/api/health", timeout=2)
                sim_status, _, _ = http("GET", f"{self.sim}/sim/stats", timeout=2)
                if status == 200 and body["checks"]["workers"] >= 1 and sim_status == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError("the stack was not ready in time:\n" + "\n".join(self.logs(n) for n in self.processes))

    def logs(self, name: str, tail: int = 40) -> str:
        lines = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        return f"--- {name} ---\n" + "\n".join(lines[-tail:])

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self.log_files:
            log.close()
