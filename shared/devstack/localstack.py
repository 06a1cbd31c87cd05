"""The local stack behind `make run` and `make demo`: Redis, the simulator, web and worker, one command.

Processes are supervised by honcho (the same tool that runs the Procfile): when one exits, or on SIGINT
or SIGTERM, all of them are stopped, web and workers first, Redis and the simulator once they have exited
(shared.devstack.supervisor). The stack's files live in its run directory (shared.devstack.stack_paths).
"""

from __future__ import annotations

import shlex
import shutil
import sys
import threading
from collections.abc import Mapping
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from shared.config import Settings
from shared.devstack import stack_paths
from shared.devstack import supervisor
from shared.observability import metrics
from shared.security import masking
from shared.store import redis_clients

BIN_DIR = Path(sys.executable).parent
# The services the app's processes use: stopped only once those have exited.
BACKING_SERVICES = ("redis", "simulator")


@dataclass(frozen=True)
class StackPlan:
    """What `run` will start, and the environment every process gets."""

    processes: dict[str, str]
    env: dict[str, str]
    web_url: str
    notes: tuple[str, ...]
    paths: stack_paths.StackPaths


def _tool(name: str) -> str:
    # Prefer the console scripts of the interpreter we run under (the project's virtualenv).
    local = BIN_DIR / name
    return str(local) if local.exists() else name


def _redis_answers(url: str) -> bool:
    try:
        with redis_clients.connect(url, socket_timeout=1, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def use_simulator(environ: MutableMapping[str, str]) -> bool:
    """Point OPENAI_BASE_URL at the local simulator when no upstream is configured; tell whether it did."""
    if environ.get("OPENAI_BASE_URL") or environ.get("OPENAI_API_KEY"):
        return False
    environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{environ.get('SIM_PORT', '9000')}/v1"
    return True


# Under the supervisor's STOP_GRACE_S by the time handing back and exiting take.
LOCAL_WORKER_SHUTDOWN_GRACE_S = supervisor.STOP_GRACE_S - 10


def plan_stack(settings: Settings, environ: Mapping[str, str], *, simulator: bool) -> StackPlan:
    """Decide which processes to start from the settings and the environment."""
    port = stack_paths.web_port(environ)
    paths = stack_paths.StackPaths.of(environ)
    sim_port = int(environ.get("SIM_PORT", "9000"))
    web_concurrency = int(environ.get("WEB_CONCURRENCY", "2"))
    processes_per_queue = {"prompts": prompt_worker_processes(settings, environ), "batch": 1}
    concurrency = {
        "prompts": int(environ.get("WORKER_CONCURRENCY", "256")),
        "batch": int(environ.get("BATCH_WORKER_CONCURRENCY", "16")),
    }
    env = dict(environ)
    env.setdefault(metrics.MULTIPROC_ENV, str(paths.metrics_dir))
    # The supervisor kills a stage that has not exited after STOP_GRACE_S: workers hand back their jobs before.
    env.setdefault("WORKER_SHUTDOWN_GRACE_S", f"{LOCAL_WORKER_SHUTDOWN_GRACE_S:g}")
    processes: dict[str, str] = {}
    notes: list[str] = []

    if not _redis_answers(settings.redis_url):
        parts = urlsplit(settings.redis_url)
        redis_port = parts.port or 6379
        if shutil.which("redis-server"):
            processes["redis"] = (
                f"redis-server --bind 127.0.0.1 --port {redis_port} --save '' --appendonly no --loglevel warning"
            )
            notes.append(f"Redis: starting redis-server on port {redis_port}")
        else:
            start_fake_redis(port=redis_port)
            notes.append(f"Redis: no redis-server installed; serving an embedded fakeredis on port {redis_port}")
    else:
        notes.append(f"Redis: using the server at {masking.mask_url(settings.redis_url)}")

    if simulator:
        processes["simulator"] = f"{_tool('model-router')} simulate --host 127.0.0.1 --port {sim_port}"
        notes.append(
            f"Upstream: the simulator at http://127.0.0.1:{sim_port}/v1 (set OPENAI_BASE_URL or a key to change)"
        )
    else:
        notes.append(f"Upstream: {masking.mask_url(settings.openai_base_url or 'https://api.openai.com/v1')}")

    if settings.api_keys_required:
        notes.append("API keys: required (create one with `model-router keys create --name NAME`)")
    else:
        notes.append("API keys: off, every request is served (set REQUIRE_API_KEY=true to require keys)")
    processes["web"] = (
        f"{_tool('gunicorn')} --worker-class gevent --workers {web_concurrency} --bind 127.0.0.1:{port} "
        f"--graceful-timeout 10 --control-socket {shlex.quote(str(paths.control_socket))} "
        "--config python:web.gunicorn_conf 'web.app:create_app()'"
    )
    # Single prompts and batch items have workers of their own, so a big batch never delays a prompt.
    pool = worker_pool(settings)
    for name, queue in (("worker", "prompts"), ("batch_worker", "batch")):
        for index in range(1, processes_per_queue[queue] + 1):
            suffix = "" if index == 1 else f"_{index}"
            processes[name + suffix] = (
                f"{_tool('celery')} -A worker.celery_app:celery_app worker --pool {pool} --queues {queue} "
                f"--hostname {queue}{suffix}@%h --concurrency {concurrency[queue]} --loglevel INFO "
                "--without-gossip --without-mingle"
            )
    processes["beat"] = (
        f"{_tool('celery')} -A worker.celery_app:celery_app beat --loglevel INFO "
        f"--schedule {shlex.quote(str(paths.beat_schedule))}"
    )
    return StackPlan(
        processes=processes, env=env, web_url=stack_paths.local_url(environ), notes=tuple(notes), paths=paths
    )


def prompt_worker_processes(settings: Settings, environ: Mapping[str, str]) -> int:
    """Return how many prompts worker processes to run: WORKER_PROCESSES, else 2 on PostgreSQL and 1 on SQLite.

    One gevent process uses at most one core: on a day it filled that core, two served 147 against 128 req/s
    at 50 ms / 64 (`python -m bench.throughput --worker-processes 1|2`, side by side). Where one process does
    not fill its core, one is as fast and lighter (README, Performance), so WORKER_PROCESSES=1 is the choice
    there. SQLite has one writer at a time, so a second process there only waits for the lock.
    """
    return int(environ.get("WORKER_PROCESSES", "1" if settings.is_sqlite else "2"))


def worker_pool(settings: Settings) -> str:
    """Return the Celery pool for the database: gevent, except on SQLite.

    Jobs wait on the upstream most of their time, and greenlets wait for less CPU than threads do; psycopg
    waits cooperatively under gevent. SQLite's calls (and its waits for the write lock) block the whole
    gevent loop, so a SQLite stack keeps threads.
    """
    return "threads" if settings.is_sqlite else "gevent"


def start_fake_redis(*, port: int) -> None:
    """Serve an in-memory Redis on loopback from a thread of this process (the last-resort fallback)."""
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()


def empty_metrics_dir(path: Path) -> None:
    """Create the processes' shared metrics directory, or remove the values a previous run left in it."""
    path.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's own files: the directory may be one an operator chose.
    for stale in path.glob("*.db"):
        stale.unlink()


def run_stack(plan: StackPlan) -> int:
    """Start every planned process in the foreground; return the exit code once all have stopped."""
    plan.paths.create()
    empty_metrics_dir(Path(plan.env[metrics.MULTIPROC_ENV]))
    manager = supervisor.StagedManager(stop_last=BACKING_SERVICES)
    for name, command in plan.processes.items():
        manager.add_process(name, command, env=plan.env, quiet=False)
    manager.loop()
    return manager.returncode or 0
