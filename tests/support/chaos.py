"""The chaos scenario: the real stack under upstream faults, a killed worker and a Redis restart.

`run_chaos` starts everything it needs on loopback only — a private redis-server on a free port (never the
shared one on 6379), a temporary PostgreSQL database, the simulator, gunicorn (2 gevent workers), 2 Celery
worker processes and beat — sends the requests while the simulator injects 429s, 500s and timeouts and one
model is hard down, SIGKILLs a worker and restarts Redis in the middle, waits until every job is terminal,
and returns the figures from the database, /api/stats, /api/health and /sim/stats. It stops every process
and drops the database whatever happens.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections import defaultdict
from collections.abc import Iterator
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from contextlib import ExitStack
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from pathlib import Path
from typing import Any
from typing import BinaryIO

import redis
from sqlalchemy import Engine
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.ledger import budget
from shared.routing.catalog import Catalog
from shared.routing.catalog import load_catalog
from shared.store import migrate
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from tests.support import prompts
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.databases import temporary_postgres_database
from tests.support.stack import Stack
from tests.support.stack import free_port
from tests.support.stack import http
from worker.celery_app import PROMPTS_QUEUE

logger = logging.getLogger(__name__)

# Settings the stack's processes must not inherit from the shell that runs the scenario.
OWN_SETTINGS = (
    "OPENAI_", "SIM_", "DATABASE_", "REDIS_", "MONTHLY_BUDGET_", "JOB_", "REAPER_", "REQUIRE_API_KEY",
    "DEFAULT_RPM", "ADDRESS_RPM", "AUTH_FAILURES_", "TRUSTED_PROXIES", "DEFAULT_DEADLINE_", "WORKER_HEARTBEAT_",
    "UPSTREAM_", "CIRCUIT_", "ESCALATION_", "ALERT_", "ENVIRONMENT",
)  # fmt: skip
FAULTS = "429=0.3,500=0.1,timeout=0.05"
# Tuned so that recovery takes seconds, not the production defaults' minutes: 300 requests run in under a minute.
SETTINGS = {
    "MONTHLY_BUDGET_LIMIT": "1000",
    "UPSTREAM_CONNECT_TIMEOUT_S": "1",
    "UPSTREAM_READ_TIMEOUT_S": "1.5",
    "UPSTREAM_BACKOFF_INITIAL_S": "0.05",
    "UPSTREAM_BACKOFF_MAX_S": "0.2",
    "UPSTREAM_RETRY_AFTER_CAP_S": "1",
    "REAPER_INTERVAL_S": "1",
    "WORKER_HEARTBEAT_S": "1",
    # Long enough that the down model's circuit stays open for /api/health to see it.
    "CIRCUIT_COOLDOWN_S": "30",
    # The healthy models fail 45% of attempts, just under the default 50% rate: by chance alone the default
    # would open their circuits now and then. The down model fails every attempt, so it still opens.
    "CIRCUIT_MIN_FAILURES": "10",
    "CIRCUIT_FAILURE_RATE": "0.9",
}
# A job's lease and deadline. A run always ends before its lease lapses (its deadline is at most 3/4 of
# JOB_LEASE_S, shared.config.TimeLimits), and a killed worker's jobs are run again only once it has.
# The suite's bounded form: a 10 s lease re-runs the killed worker's jobs within seconds, so the jobs get a
# deadline of 7 s, shorter than any user's.
BOUNDED_JOB_LIMITS = {"JOB_LEASE_S": "10", "DEFAULT_DEADLINE_S": "7"}
# What users get: the product's default deadline, under the shortest lease that holds it (60 s needs 80 s). A
# killed worker's jobs wait out that lease, and the run takes minutes.
USER_JOB_LIMITS = {"JOB_LEASE_S": "80"}
SIM_CONFIG = {"retry_after_s": 0.2, "timeout_hang_s": 3}
WAIT_TIMEOUT_S = 20.0
# Responses that start this long after Redis is back may not be 503 any more: every process reconnected.
RECONNECT_GRACE_S = 5.0
READY_TIMEOUT_S = 15.0
HEALTH_INTERVAL_S = 0.5
# How long the Redis restart waits for job messages to be queued (so that the restart loses some).
BACKLOG_WAIT_S = 5.0
FREEZE_MS = 10_000


def chaos_prompt(number: int) -> str:
    """Return request `number`'s prompt: 60% easy (cheap tier), 25% medium (mid), 15% hard (high); all unique."""
    kind = number % 20
    if kind < 12:
        return f"Question {number}: what is {number} + {kind}?"
    if kind < 17:
        return f"Case {number}: compare TCP and UDP. Explain the trade-offs of each for video streaming, step by step."
    return f"{prompts.HARD}\nVariant {number}."


class PrivateRedis:
    """A redis-server child process on a free loopback port, without persistence; restartable on that port."""

    def __init__(self, *, work_dir: Path) -> None:
        self.port = free_port()
        self._work_dir = work_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) and wait until it answers PING."""
        if self._log is None:
            self._log = open(self._work_dir / "redis.log", "ab")  # noqa: SIM115  (closed in close())
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(self._work_dir),
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in time")

    def freeze_and_list_queued_jobs(self, queue: str = PROMPTS_QUEUE) -> set[str]:
        """Pause every client's writes (no worker can take a message any more); return the queued jobs' ids.

        The pause lasts until `unfreeze()`, the server stops, or FREEZE_MS pass.
        """
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)
        with client:
            client.execute_command("CLIENT", "PAUSE", str(FREEZE_MS), "WRITE")
            raw = client.lrange(queue, 0, -1)
        job_ids = set()
        for payload in raw:
            # A kombu message: JSON whose base64 body is Celery's [args, kwargs, embed].
            message = json.loads(payload)
            if message.get("headers", {}).get("task") == "jobs.run":
                job_ids.add(json.loads(base64.b64decode(message["body"]))[0][0])
        return job_ids

    def unfreeze(self) -> None:
        """Let writes through again."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)
        with client:
            client.execute_command("CLIENT", "UNPAUSE")

    def stop(self) -> None:
        """Stop the server if it runs (SIGTERM; with nothing to save it exits at once)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        """Stop the server and close its log."""
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class Response:
    """What one client request ended with, in seconds since the run started."""

    number: int
    wait: bool
    started: float
    ended: float
    status: int | str
    job_id: str | None = None
    job_status: str | None = None
    cost: Decimal | None = None


@dataclass
class HealthWatcher:
    """Poll /api/health from a thread, remembering every circuit state and answer seen."""

    url: str
    origin: float
    max_s: float = 900.0
    states: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    first_open_at: dict[str, float] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthWatcher:
        self._thread = threading.Thread(target=self._run, name="health-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                status, _, body = http("GET", self.url, timeout=3)
            except (OSError, ValueError) as exc:
                self.answers[type(exc).__name__] += 1
            else:
                self.answers[str(status)] += 1
                for model, state in (body.get("checks", {}).get("circuits") or {}).items():
                    self.states[model][state] += 1
                    if state == "open":
                        self.first_open_at.setdefault(model, round(time.monotonic() - self.origin, 2))
            self._stop.wait(HEALTH_INTERVAL_S)


def _sqlalchemy_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg://", 1)


def _post_prompt(url: str, body: dict[str, Any], *, timeout: float) -> tuple[int | str, Any]:
    """POST one prompt on a fresh connection; return the status (or the client-side error's name) and body."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError) as exc:  # refused, reset, timed out, or an answer that is not JSON
        return type(exc).__name__, None


class _Progress:
    """How many requests have started, shared by the sending threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0

    def tick(self) -> None:
        with self._lock:
            self.started += 1

    def wait_for(self, count: int, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.started < count and time.monotonic() < deadline:
            time.sleep(0.05)


@contextmanager
def _private_redis(work_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(work_dir=work_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()


def run_chaos(
    *,
    requests: int,
    concurrency: int,
    work_dir: Path,
    down_model: str = "gpt-3.5-turbo",
    faults: str = FAULTS,
    redis_outage_s: float = 3.0,
    kill_at: float = 0.3,
    redis_restart_at: float = 0.6,
    request_timeout_s: float = 60.0,
    drain_timeout_s: float = 120.0,
    job_limits: Mapping[str, str] = BOUNDED_JOB_LIMITS,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the scenario once and return its figures (money as exact decimal strings).

    `kill_at` and `redis_restart_at` are the fractions of the requests started before worker1 is SIGKILLed
    (and a replacement started) and before Redis is stopped for `redis_outage_s` and started again.
    `job_limits` are the jobs' lease and deadline (BOUNDED_JOB_LIMITS or USER_JOB_LIMITS); `settings` override
    SETTINGS and them. Pick a `down_model` that has fallbacks (not the top tier's).
    """
    catalog = load_catalog(SEED_CATALOG_PATH)
    if not catalog.get_model(down_model).fallbacks:
        raise ValueError(f"{down_model} has no fallbacks: its traffic could only fail")
    work_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(temporary_postgres_database("model_router_chaos"))
        migrate.upgrade("head", database_url=_sqlalchemy_url(database_url))
        redis_server = cleanup.enter_context(_private_redis(work_dir))
        env = {key: value for key, value in os.environ.items() if not key.startswith(OWN_SETTINGS)}
        chosen = {**SETTINGS, **job_limits, **(settings or {})}
        env.update(chosen, DATABASE_URL=database_url, REDIS_URL=redis_server.url)
        # The production pool on PostgreSQL: gevent.
        stack = Stack(env=env, log_dir=work_dir, workers=2, beat=True, web_workers=2, worker_pool="gevent")
        cleanup.callback(stack.stop)
        started_at = time.monotonic()
        stack.start()
        engine = create_engine(_sqlalchemy_url(database_url))
        cleanup.callback(engine.dispose)
        configured = http("POST", f"{stack.sim}/sim/config", {"reset": True, "faults": faults, "down": down_model,
                                                               **SIM_CONFIG})  # fmt: skip
        if configured[0] != 200:
            raise RuntimeError(f"the simulator refused its configuration: {configured[2]}")
        http("POST", f"{stack.sim}/sim/reset")
        logger.info("chaos stack ready in %.1fs; redis on port %d", time.monotonic() - started_at, redis_server.port)
        run = _Run(
            stack=stack, redis_server=redis_server, engine=engine, requests=requests, concurrency=concurrency,
            request_timeout_s=request_timeout_s,
        )  # fmt: skip
        with HealthWatcher(f"{stack.web}/api/health", origin=run.origin) as watcher:
            run.send_with_chaos(kill_at=kill_at, redis_restart_at=redis_restart_at, redis_outage_s=redis_outage_s)
            run.drain(timeout_s=drain_timeout_s)
        figures = run.figures(catalog=catalog, down_model=down_model, watcher=watcher)
        figures["settings"] = {**chosen, "faults": faults, "down": down_model, **SIM_CONFIG}
        figures["timings"]["total_s"] = round(time.monotonic() - started_at, 2)
    return figures


@dataclass
class _Run:
    """One scenario's moving parts and what happened, from the first request to the drained queue."""

    stack: Stack
    redis_server: PrivateRedis
    engine: Engine
    requests: int
    concurrency: int
    request_timeout_s: float
    origin: float = field(default_factory=time.monotonic)
    responses: list[Response] = field(default_factory=list)
    running_at_kill: set[str] = field(default_factory=set)
    lost_in_restart: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)

    def _now(self) -> float:
        return round(time.monotonic() - self.origin, 2)

    def _send(self, number: int, progress: _Progress) -> Response:
        progress.tick()
        wait = number % 2 == 0
        body: dict[str, Any] = {"prompt": chaos_prompt(number), "wait": wait}
        if wait:
            body["timeout_s"] = WAIT_TIMEOUT_S
        started = self._now()
        status, answer = _post_prompt(f"{self.stack.web}/api/prompt", body, timeout=self.request_timeout_s)
        answer = answer if isinstance(answer, dict) else {}
        cost = answer.get("cost") if status == 200 else None
        return Response(
            number=number, wait=wait, started=started, ended=self._now(), status=status, job_id=answer.get("job_id"),
            job_status=answer.get("status"), cost=None if cost is None else Decimal(str(cost)),
        )  # fmt: skip

    def send_with_chaos(self, *, kill_at: float, redis_restart_at: float, redis_outage_s: float) -> None:
        """Send every request from a bounded pool; meanwhile kill a worker and restart Redis."""
        progress = _Progress()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="chaos-client")
        try:
            futures: list[Future[Response]] = [pool.submit(self._send, n, progress) for n in range(self.requests)]
            # Each step waits for its share of requests to have started, but no longer than the whole
            # run could take, so a stalled stack fails the run instead of hanging it.
            budget_s = self.request_timeout_s * (self.requests / self.concurrency + 2)
            progress.wait_for(int(self.requests * kill_at), timeout_s=budget_s)
            self._kill_a_worker()
            progress.wait_for(int(self.requests * redis_restart_at), timeout_s=budget_s)
            self._restart_redis(outage_s=redis_outage_s)
            _, pending = wait_for_futures(futures, timeout=budget_s)
            if pending:
                raise RuntimeError(f"{len(pending)} requests still open after {budget_s:.0f}s")
            self.responses = [future.result() for future in futures]
            self.timings["requests_done_at"] = self._now()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _kill_a_worker(self) -> None:
        with Session(self.engine) as session:
            running_before = session.scalar(
                select(func.count()).select_from(RequestLog).where(RequestLog.status == JobStatus.RUNNING)
            )
        self.timings["worker_killed_at"] = self._now()
        self.stack.kill("worker1")
        # Nothing of the dead worker can move now; the set also holds the other worker's jobs of the moment.
        with Session(self.engine) as session:
            self.running_at_kill = set(
                session.scalars(select(RequestLog.id).where(RequestLog.status == JobStatus.RUNNING))
            )
        logger.info("killed worker1 (%d jobs running just before)", running_before or 0)
        self.stack.start_worker("worker3")
        self.timings["replacement_ready_at"] = self._now()

    def _restart_redis(self, *, outage_s: float) -> None:
        # Stop it while job messages wait in the queue, so that the restart really loses accepted work.
        deadline = time.monotonic() + BACKLOG_WAIT_S
        while True:
            self.lost_in_restart = self.redis_server.freeze_and_list_queued_jobs()
            if self.lost_in_restart or time.monotonic() >= deadline:
                break
            self.redis_server.unfreeze()
            time.sleep(0.1)
        self.timings["redis_stopped_at"] = self._now()
        self.redis_server.stop()
        time.sleep(outage_s)
        self.redis_server.start()
        self.timings["redis_started_at"] = self._now()
        logger.info("restarted redis after %.1fs; %d queued jobs lost", outage_s, len(self.lost_in_restart))

    def drain(self, *, timeout_s: float) -> None:
        """Wait until no job row is queued or running, or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        with Session(self.engine) as session:
            while time.monotonic() < deadline:
                open_jobs = session.scalar(
                    select(func.count())
                    .select_from(RequestLog)
                    .where(RequestLog.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                )
                session.rollback()
                if not open_jobs:
                    break
                time.sleep(0.5)
        self.timings["drained_at"] = self._now()

    def figures(self, *, catalog: Catalog, down_model: str, watcher: HealthWatcher) -> dict[str, Any]:
        """Collect the figures from the database, the API and the simulator."""
        with Session(self.engine) as session:
            rows = {row.id: row for row in session.scalars(select(RequestLog))}
            attempts = list(session.scalars(select(RequestAttempt).order_by(RequestAttempt.job_id, RequestAttempt.seq)))
            ledger = session.scalars(select(MonthlyBudget).where(MonthlyBudget.scope == budget.GLOBAL_SCOPE)).first()
        stats = http("GET", f"{self.stack.web}/api/stats", timeout=10)[2]
        health_status, _, health = http("GET", f"{self.stack.web}/api/health", timeout=10)
        sim = http("GET", f"{self.stack.sim}/sim/stats", timeout=10)[2]["models"]
        outage = (self.timings["redis_stopped_at"], self.timings["redis_started_at"] + RECONNECT_GRACE_S)
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            **_job_figures(rows, attempts, stats),
            **_answer_figures(self.responses, rows, outage=outage),
            "down_model": _down_model_figures(down_model, rows, attempts, sim),
            "circuits": {
                "seen_in_health": {model: dict(seen) for model, seen in watcher.states.items()},
                "first_open_at": watcher.first_open_at,
                "stats_after": stats["circuits"],
                "health_answers": dict(watcher.answers),
            },
            "kill": _kill_figures(self.running_at_kill, rows, attempts),
            "redis_restart": {
                "queued_jobs_lost": len(self.lost_in_restart),
                "lost_jobs_requeued": sum(_requeued(rows[j]) for j in self.lost_in_restart if j in rows),
                "lost_jobs_terminal": sum(rows[j].status.is_terminal for j in self.lost_in_restart if j in rows),
            },
            **_money_figures(catalog, rows, attempts, ledger, sim),
            "health_after": {"status": health_status, "workers": health.get("checks", {}).get("workers")},
            "alive_after": {
                name: process.poll() is None for name, process in self.stack.processes.items() if name != "worker1"
            },
            "timings": dict(self.timings),
        }


def _job_figures(rows: dict[str, RequestLog], attempts: list[RequestAttempt], stats: dict[str, Any]) -> dict[str, Any]:
    statuses = Counter(row.status for row in rows.values())
    succeeded, failed = statuses[JobStatus.SUCCEEDED], statuses[JobStatus.FAILED]
    seqs: dict[str, list[int]] = defaultdict(list)
    last: dict[str, RequestAttempt] = {}
    for attempt in attempts:
        seqs[attempt.job_id].append(attempt.seq)
        if attempt.job_id not in last or attempt.seq > last[attempt.job_id].seq:
            last[attempt.job_id] = attempt
    stat_keys = ("total_requests", "successful_requests", "failed_requests", "success_rate", "total_retries",
                 "fallback_attempts", "escalation_rate", "total_cost")  # fmt: skip
    return {
        "accepted": len(rows),
        "succeeded": succeeded,
        "failed": failed,
        "not_terminal": len(rows) - succeeded - failed,
        "unsettled": sum(not row.settled for row in rows.values()),
        "failed_by_error": dict(Counter(row.error_code for row in rows.values() if row.status is JobStatus.FAILED)),
        "failed_by_last_attempt": dict(
            Counter(
                f"{a.model}:{a.error_class}" for job_id, a in last.items() if rows[job_id].status is JobStatus.FAILED
            )
        ),
        "success_rate": round(succeeded * 100 / len(rows), 2) if rows else 0.0,
        "retries": sum(row.retry_count for row in rows.values()),
        "fallback_attempts": stats["fallback_attempts"],
        "circuit_open_skips": sum(a.error_class == "circuit_open" for a in attempts),
        "escalations": sum(row.escalated for row in rows.values()),
        "answered_by_model": dict(
            Counter(row.model_used for row in rows.values() if row.status is JobStatus.SUCCEEDED)
        ),
        # Each job's attempts are written by its one settlement, numbered 1..n.
        "jobs_with_gapped_attempt_seq": sum(sorted(s) != list(range(1, len(s) + 1)) for s in seqs.values()),
        "stats": {key: stats[key] for key in stat_keys},
    }


def _answer_figures(
    responses: list[Response], rows: dict[str, RequestLog], *, outage: tuple[float, float]
) -> dict[str, Any]:
    answered = Counter(str(response.status) for response in responses)
    seen_ids = {r.job_id for r in responses if r.status in (200, 202) and r.job_id}
    finished = [r for r in responses if r.status == 200 and r.job_status in ("succeeded", "failed")]
    return {
        "answers": dict(sorted(answered.items())),
        "rejected": {
            "402": answered["402"],
            "503": answered["503"],
            # A 503 whose request did not overlap the outage (plus the reconnection grace).
            "503_outside_outage": sum(
                r.status == 503 and (r.ended < outage[0] or r.started > outage[1]) for r in responses
            ),
            "other_status": sum(isinstance(r.status, int) and r.status not in (200, 202, 402, 503) for r in responses),
            "client_errors": sum(isinstance(r.status, str) for r in responses),
        },
        "answered_ids_without_row": len(seen_ids - set(rows)),
        "rows_without_answer": len(set(rows) - seen_ids),
        "answers_disagreeing_with_row": sum(
            r.job_id not in rows or rows[r.job_id].status.value != r.job_status or rows[r.job_id].cost != r.cost
            for r in finished
        ),
        "success_rate_of_requests": round(
            sum(row.status is JobStatus.SUCCEEDED for row in rows.values()) * 100 / len(responses), 2
        )
        if responses
        else 0.0,
    }


def _down_model_figures(
    down_model: str, rows: dict[str, RequestLog], attempts: list[RequestAttempt], sim: dict[str, Any]
) -> dict[str, Any]:
    # A job was routed to the model when its primary slot (the routed model's chain) starts there.
    routed = {a.job_id for a in attempts if a.purpose == "primary" and a.model == down_model}
    return {
        "name": down_model,
        "routed_jobs": len(routed),
        "routed_succeeded_on": dict(
            Counter(rows[j].model_used for j in routed if rows[j].status is JobStatus.SUCCEEDED)
        ),
        "routed_failed": sum(rows[j].status is JobStatus.FAILED for j in routed),
        "circuit_open_skips": sum(a.error_class == "circuit_open" and a.model == down_model for a in attempts),
        "upstream_calls": sim[down_model]["calls"],
        "upstream_faults": sim[down_model]["faults"],
        "upstream_billed_tokens": sim[down_model]["prompt_tokens"] + sim[down_model]["completion_tokens"],
    }


def _requeued(row: RequestLog) -> bool:
    # The web tier stamps enqueued_at with created_at; only the reaper moves it on when it re-enqueues.
    return row.enqueued_at is not None and row.enqueued_at > row.created_at


def _kill_figures(running_at_kill: set[str], rows: dict[str, RequestLog], attempts: list[RequestAttempt]) -> dict:
    reruns = {job_id for job_id, row in rows.items() if row.run_count > 1}
    requeued = {job_id for job_id, row in rows.items() if _requeued(row)}
    return {
        "requeued_by_reaper": len(requeued),
        # Queued jobs whose message was lost (in the Redis restart) or waited a whole lease in the queue.
        "requeued_while_queued": len(requeued - reruns),
        "running_at_kill": len(running_at_kill),
        "rerun_jobs": len(reruns),
        "rerun_jobs_not_running_at_kill": len(reruns - running_at_kill),
        "rerun_jobs_unfinished": sum(not rows[j].status.is_terminal for j in reruns),
        "worker_lost_attempts": sum(a.error_class == "worker_lost" for a in attempts),
        # The most the re-run jobs' lost runs can have been billed: each job's reservation covers its
        # dearest answer plus its escalation, and a lost run made at most those calls successfully.
        "rerun_reserved_bound": str(sum((rows[j].reserved_cost for j in reruns), Decimal(0))),
    }


def _money_figures(
    catalog: Catalog,
    rows: dict[str, RequestLog],
    attempts: list[RequestAttempt],
    ledger: MonthlyBudget | None,
    sim: dict[str, Any],
) -> dict[str, Any]:
    costs: dict[str, Decimal] = defaultdict(Decimal)
    for attempt in attempts:
        costs[attempt.job_id] += attempt.cost
    ok = [a for a in attempts if a.outcome == "ok"]
    attempts_cost = sum(costs.values(), Decimal(0))
    # Recomputed from the simulator's own token counts; a model's cost is linear in its tokens.
    billed_cost = sum(
        (catalog.get_model(name).cost(row["prompt_tokens"], row["completion_tokens"]) for name, row in sim.items()),
        Decimal(0),
    )
    recorded = {
        name: {
            "ok_calls": sum(a.model == name for a in ok),
            "prompt_tokens": sum(a.prompt_tokens for a in ok if a.model == name),
            "completion_tokens": sum(a.completion_tokens for a in ok if a.model == name),
        }
        for name in catalog.model_names
    }
    return {
        "ledger": {
            "total_spent": str(ledger.total_spent if ledger else Decimal(0)),
            "reserved": str(ledger.reserved if ledger else Decimal(0)),
            "request_count": ledger.request_count if ledger else 0,
        },
        "jobs_cost": str(sum((row.cost for row in rows.values()), Decimal(0))),
        "attempts_cost": str(attempts_cost),
        "jobs_cost_not_sum_of_attempts": sum(row.cost != costs[job_id] for job_id, row in rows.items()),
        "upstream": {
            "billed_cost": str(billed_cost),
            "calls": sum(row["calls"] for row in sim.values()),
            "faults": sum(row["faults"] for row in sim.values()),
            "by_model": sim,
            "recorded_by_model": recorded,
            # Negative when the ledger holds more than the upstream billed: the killed worker's calls are charged
            # at their bounds (unconfirmed), whether or not they were billed, and at least what they were.
            "billed_but_unrecorded_cost": str(billed_cost - attempts_cost),
            "unconfirmed_cost": str(sum((row.unconfirmed_cost for row in rows.values()), Decimal(0))),
            "billed_but_unrecorded_calls": sum(row["calls"] - row["faults"] for row in sim.values()) - len(ok),
        },
    }
