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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import BinaryIO

import redis

from shared.devstack import localstack
from shared.observability import metrics
from shared.store import migrate
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.databases import temporary_postgres_database

BIN = Path(sys.executable).parent
WORKER_COMMAND = (
    str(BIN / "celery"), "-A", "worker.celery_app:celery_app", "worker", "--pool", "threads", "--concurrency", "8",
    "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--queues", "prompts,batch",
)  # fmt: skip


def worker_command(queues: str | None = None, pool: str = "threads", concurrency: int | None = None) -> list[str]:
    """Return WORKER_COMMAND, consuming `queues` (comma-separated) instead of "prompts,batch" when given.

    `pool` "gevent" runs the production pool on PostgreSQL (SQLite's blocking calls need "threads");
    `concurrency`, when given, replaces the 8 slots.
    """
    command = list(WORKER_COMMAND)
    if queues is not None:
        command[command.index("--queues") + 1] = queues
    command[command.index("--pool") + 1] = pool
    if concurrency is not None:
        command[command.index("--concurrency") + 1] = str(concurrency)
    return command


# Upstream retries that back off briefly and a quick worker heartbeat: suites that inject faults finish fast.
QUICK_RETRIES = {"UPSTREAM_BACKOFF_INITIAL_S": "0.05", "UPSTREAM_BACKOFF_MAX_S": "0.2", "WORKER_HEARTBEAT_S": "2"}


def migrated_sqlite_url(directory: Path) -> str:
    """Return the URL of a new SQLite database file in `directory`, migrated to head."""
    url = f"sqlite:///{directory}/router.db"
    migrate.upgrade("head", database_url=url)
    return url


@contextmanager
def migrated_database(backend: str, directory: Path) -> Iterator[str]:
    """Yield the URL of a new database migrated to head: a SQLite file in `directory`, or a throw-away
    PostgreSQL database (dropped afterwards) when `backend` is "postgresql"."""
    if backend == "sqlite":
        yield migrated_sqlite_url(directory)
        return
    with temporary_postgres_database("model_router_stack") as url:
        migrate.upgrade("head", database_url=url.replace("postgresql://", "postgresql+psycopg://", 1))
        yield url


def free_port() -> int:
    """Return a loopback port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    method: str, url: str, body: Any = None, *, timeout: float = 60, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """Send one JSON request (with extra `headers`, if any); return status, headers and the decoded body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


@dataclass
class Stack:
    """Processes started for one test module; stopped together.

    Optional: `workers` Celery worker processes (more than one get distinct node names `workerN@%h`),
    a Celery `beat` process, `web_workers` gunicorn workers and extra gunicorn arguments (`web_args`).
    `worker_queues`, when given, starts one worker per entry (`workerN@%h`, consuming that entry's
    comma-separated queues, e.g. ("prompts", "batch") as in production) instead of `workers` workers.
    `worker_pool`: see worker_command. `worker_concurrency`, when given, sets each of those workers' slots
    (one entry per entry of `worker_queues`). `metrics_dir`: see the field.
    """

    env: dict[str, str]
    log_dir: Path
    web_port: int = field(default_factory=free_port)
    sim_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_files: list[BinaryIO] = field(default_factory=list)
    workers: int = 1
    beat: bool = False
    web_workers: int = 2
    web_args: tuple[str, ...] = ()
    worker_queues: tuple[str, ...] | None = None
    worker_pool: str = "threads"
    worker_concurrency: tuple[int, ...] | None = None
    # False: no PROMETHEUS_MULTIPROC_DIR, each process serves only its own metrics (as across pods).
    metrics_dir: bool = True

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def sim(self) -> str:
        return f"http://127.0.0.1:{self.sim_port}"

    def start(self) -> None:
        # The simulator, unless the settings name another upstream (a hostile one, say).
        self.env.setdefault("OPENAI_BASE_URL", f"{self.sim}/v1")
        # The suites' catalog (tests.support.catalogs), for the simulator and the stack alike.
        self.env.setdefault("MODEL_CATALOG_PATH", str(SEED_CATALOG_PATH))
        # Tests and benchmarks send all their traffic from this one address at rates far past the default
        # limits; a test of the limits sets them (a key's own rpm applies either way).
        for limit in ("DEFAULT_RPM", "ADDRESS_RPM"):
            self.env.setdefault(limit, "0")
        # A fresh directory per stack: the processes' metric values start from nothing.
        if self.metrics_dir:
            metrics_dir = self.log_dir / "metrics"
            localstack.empty_metrics_dir(metrics_dir)
            self.env[metrics.MULTIPROC_ENV] = str(metrics_dir)
        else:
            self.env.pop(metrics.MULTIPROC_ENV, None)
        self._spawn("simulator", [str(BIN / "model-router"), "simulate", "--port", str(self.sim_port)])
        self._spawn(
            "web",
            [str(BIN / "gunicorn"), "--worker-class", "gevent", "--workers", str(self.web_workers), "--bind",
             f"127.0.0.1:{self.web_port}", "--config", "python:web.gunicorn_conf", *self.web_args,
             "web.app:create_app()"],
        )  # fmt: skip
        if self.worker_queues is not None:
            self.workers = len(self.worker_queues)
            for number, queues in enumerate(self.worker_queues, start=1):
                slots = None if self.worker_concurrency is None else self.worker_concurrency[number - 1]
                self.start_worker(f"worker{number}", wait=False, queues=queues, concurrency=slots)
        elif self.workers == 1:
            self._spawn("worker", worker_command(pool=self.worker_pool))
        else:
            for number in range(1, self.workers + 1):
                self.start_worker(f"worker{number}", wait=False)
        if self.beat:
            self._spawn(
                "beat",
                [str(BIN / "celery"), "-A", "worker.celery_app:celery_app", "beat", "--loglevel", "INFO",
                 "--schedule", str(self.log_dir / "beat-schedule")],
            )  # fmt: skip
        self._wait_until_ready(min_workers=self.workers)

    def start_worker(
        self,
        name: str,
        *,
        wait: bool = True,
        timeout_s: float = 60,
        queues: str | None = None,
        concurrency: int | None = None,
    ) -> None:
        """Start one more Celery worker process with node name `name@%h`; wait until it is ready.

        `queues` (comma-separated) replaces the default "prompts,batch", `concurrency` the 8 slots.
        """
        self._spawn(name, [*worker_command(queues, self.worker_pool, concurrency), "-n", f"{name}@%h"])
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise RuntimeError(f"{name} exited during start-up:\n{self.logs(name)}")
            # Celery logs "<node name> ready." once it consumes; its heartbeat starts at the same signal.
            log = (self.log_dir / f"{name}.log").read_text(errors="replace")
            if f"{name}@" in log and " ready." in log:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} was not ready in time:\n{self.logs(name)}")

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send `sig` to a process's whole group (it was started in its own session) and reap it."""
        process = self.processes[name]
        os.killpg(process.pid, sig)
        process.wait(timeout=20)

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115  (closed in stop())
        self.log_files.append(log)
        self.processes[name] = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_until_ready(self, timeout_s: float = 60, *, min_workers: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up:\n{self.logs(name)}")
            try:
                status, _, body = http("GET", f"{self.web}/api/health", timeout=2)
                sim_status, _, _ = http("GET", f"{self.sim}/sim/stats", timeout=2)
                if status == 200 and body["checks"]["workers"] >= min_workers and sim_status == 200:
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


# Settings the stack's processes must not inherit from the shell that runs pytest.
OWN_SETTINGS = (
    "OPENAI_", "SIM_", "DATABASE_", "REDIS_", "MONTHLY_BUDGET_", "JOB_", "REAPER_", "REQUIRE_API_KEY",
    "DEFAULT_RPM", "ADDRESS_RPM", "AUTH_FAILURES_", "TRUSTED_PROXIES", "WORKER_HEARTBEAT_", "UPSTREAM_", "ALERT_",
    "ENVIRONMENT", "WEBHOOK_", "LOG_", "METRICS_", "WORKER_SHUTDOWN_", "WORKER_METRICS_",
)  # fmt: skip


@contextmanager
def running_stack(
    *, database_url: str, redis_url: str, log_dir: Path, settings: dict[str, str], **options: Any
) -> Iterator[Stack]:
    """Start a stack on its own Redis database with these settings; stop it and flush Redis afterwards."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = {key: value for key, value in os.environ.items() if not key.startswith(OWN_SETTINGS)}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, **settings)
    stack = Stack(env=env, log_dir=log_dir, **options)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        client.flushdb()
        client.close()


def reset_simulator(stack: Stack) -> None:
    """Return the stack's simulator to the settings it started with."""
    http("POST", f"{stack.sim}/sim/config", {"reset": True})


def upstream_calls(stack: Stack) -> dict[str, int]:
    """Return how many calls the stack's simulator has answered, per model that had any."""
    stats = http("GET", f"{stack.sim}/sim/stats")[2]["models"]
    return {model: row["calls"] for model, row in stats.items() if row["calls"]}
