"""The stack the guarantee scenarios run against, and what they read from outside it.

`running_bench` starts, on loopback only, a private redis-server on a free port, a temporary PostgreSQL
database migrated to head, the simulator, gunicorn (2 gevent workers), one Celery worker per queue as in
production (prompts: 8 slots, batch: 2 slots, gevent pool) and beat. `Bench` is what a scenario gets: HTTP
calls that never raise, the simulator's own record of what it billed, the ledger and the job rows as stored.
Everything is stopped and the database dropped whatever happens.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from collections.abc import Iterator
from contextlib import ExitStack
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from pathlib import Path
from typing import Any

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
from shared.store.models import BudgetBucket
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.chaos import OWN_SETTINGS as CHAOS_OWN_SETTINGS
from tests.support.chaos import PrivateRedis
from tests.support.databases import temporary_postgres_database
from tests.support.stack import Stack

# Settings the stack's processes must not inherit from the shell that runs the bench.
OWN_SETTINGS = (
    *CHAOS_OWN_SETTINGS, "RESPONSE_CACHE_", "WEBHOOK_", "LOG_", "METRICS_", "MAX_", "DB_", "DIFFICULTY_",
    "MODEL_CATALOG", "RATE_", "AUTH_", "MODEL_ROUTER_", "STREAM_",
)  # fmt: skip

# Recovery in seconds rather than the production defaults' minutes. JOB_LEASE_S 20 is the lease of the
# backlog scenario; every run ends inside it. Nothing is answered from the response cache: each accepted job
# makes its own upstream calls, so the simulator's count is the jobs' count. DEFAULT_RPM is set high so that
# no default limit refuses a scenario's burst (the bench measures guarantees, not throttling).
SETTINGS = {
    "MONTHLY_BUDGET_LIMIT": "1000",
    "UPSTREAM_CONNECT_TIMEOUT_S": "1",
    # Production's read timeout: a hanging upstream is cut by the job's deadline, not by the socket.
    "UPSTREAM_READ_TIMEOUT_S": "60",
    "UPSTREAM_BACKOFF_INITIAL_S": "0.05",
    "UPSTREAM_BACKOFF_MAX_S": "0.2",
    "UPSTREAM_RETRY_AFTER_CAP_S": "1",
    "JOB_LEASE_S": "20",
    "REAPER_INTERVAL_S": "1",
    "WORKER_HEARTBEAT_S": "1",
    "DEFAULT_DEADLINE_S": "8",
    "CIRCUIT_MIN_FAILURES": "10",
    "CIRCUIT_FAILURE_RATE": "0.9",
    "RESPONSE_CACHE_ENABLED": "false",
    "WEBHOOK_SECRET": "bench-webhook-secret",
    "WEBHOOK_RETRY_FOR_S": "0",
    "WEBHOOK_TIMEOUT_S": "1",
    "DEFAULT_RPM": "1000000",
    "REQUIRE_API_KEY": "false",
    "ENVIRONMENT": "development",
}
# The stacks the scenarios need: the service as configured above, and the same with a small global limit.
PROFILES: dict[str, dict[str, str]] = {
    "main": {},
    "small_budget": {"MONTHLY_BUDGET_LIMIT": "1"},
    # A month that could pay for everything, under a rolling six hours that cannot.
    "small_window": {"MONTHLY_BUDGET_LIMIT": "100", "BUDGET_WINDOWS": '{"6h": "1"}'},
}
WORKER_QUEUES = ("prompts", "batch")
WORKER_SLOTS = (8, 2)
THROTTLE_TRIES = 5
THROTTLE_WAIT_S = 2.0
SIM_DEFAULTS = {"reset": True, "retry_after_s": 0.2, "timeout_hang_s": 3}


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: the status (or the client-side error's name), headers and decoded JSON body."""

    status: int | str
    headers: dict[str, str]
    body: Any

    def get(self, name: str) -> Any:
        return self.body.get(name) if isinstance(self.body, dict) else None


def call(
    url: str, method: str = "GET", body: Any = None, *, headers: dict[str, str] | None = None, timeout: float = 60
) -> Answer:
    """Send one JSON request on a fresh connection; never raise for what the server or the network does."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, got = exc.read(), exc.code, dict(exc.headers)
    except (OSError, ValueError) as exc:
        return Answer(type(exc).__name__, {}, None)
    try:
        return Answer(status, got, json.loads(raw or b"null"))
    except ValueError:
        return Answer(status, got, None)


@dataclass
class Bench:
    """One running stack (or only its Redis, for scenarios that need nothing else) and how to read it."""

    redis_url: str
    work_dir: Path
    quick: bool
    stack: Stack | None = None
    engine: Engine | None = None
    private_redis: PrivateRedis | None = None
    catalog: Catalog = field(default_factory=lambda: load_catalog(SEED_CATALOG_PATH))
    settings: dict[str, str] = field(default_factory=dict)
    throttled: int = 0

    # HTTP

    def api(self, method: str, path: str, body: Any = None, **options: Any) -> Answer:
        """Call the web tier; a 429 is waited out (its Retry-After, at most THROTTLE_WAIT_S) and sent again.

        The scenarios measure guarantees, not throttling: a default rate limit must not stand in for a
        refusal. Each throttled try is counted in `throttled`.
        """
        assert self.stack is not None
        for _ in range(THROTTLE_TRIES):
            answer = call(f"{self.stack.web}{path}", method, body, **options)
            if answer.status != 429:
                return answer
            self.throttled += 1
            try:
                wait_s = float(answer.headers.get("Retry-After", "1"))
            except ValueError:
                wait_s = 1.0
            time.sleep(min(max(wait_s, 0.1), THROTTLE_WAIT_S))
        return answer

    def sim(self, method: str, path: str, body: Any = None) -> Answer:
        assert self.stack is not None
        return call(f"{self.stack.sim}{path}", method, body, timeout=10)

    def configure_sim(self, **values: Any) -> None:
        """Put the simulator on its defaults plus `values` and zero its counts."""
        answer = self.sim("POST", "/sim/config", {**SIM_DEFAULTS, **values})
        if answer.status != 200:
            raise RuntimeError(f"the simulator refused {values}: {answer.body}")
        self.sim("POST", "/sim/reset")

    # The simulator's own record

    def sim_models(self) -> dict[str, dict[str, int]]:
        return self.sim("GET", "/sim/stats").body["models"]

    def sim_calls(self) -> int:
        return sum(row["calls"] for row in self.sim_models().values())

    def sim_billed(self) -> Decimal:
        """Return what the simulator billed since its last reset, priced from its own token counts."""
        return sum(
            (
                self.catalog.get_model(name).cost(row["prompt_tokens"], row["completion_tokens"])
                for name, row in self.sim_models().items()
            ),
            Decimal(0),
        )

    # The database

    def session(self) -> Session:
        assert self.engine is not None
        return Session(self.engine, expire_on_commit=False)

    def ledger(self) -> tuple[Decimal, Decimal, Decimal]:
        """Return the global scope's (spent, reserved, limit) summed over its months."""
        with self.session() as session:
            rows = list(session.scalars(select(MonthlyBudget).where(MonthlyBudget.scope == budget.GLOBAL_SCOPE)))
        spent = sum((row.total_spent for row in rows), Decimal(0))
        reserved = sum((row.reserved for row in rows), Decimal(0))
        limit = max((row.monthly_limit for row in rows), default=Decimal(self.settings["MONTHLY_BUDGET_LIMIT"]))
        return spent, reserved, limit

    def window_ledger(self) -> tuple[Decimal, Decimal, Decimal]:
        """Return the global scope's (spent, reserved) over its budget buckets, and its one window's limit."""
        with self.session() as session:
            rows = list(session.scalars(select(BudgetBucket).where(BudgetBucket.scope == budget.GLOBAL_SCOPE)))
        ((_, limit),) = json.loads(self.settings["BUDGET_WINDOWS"]).items()
        spent = sum((row.spent for row in rows), Decimal(0))
        return spent, sum((row.reserved for row in rows), Decimal(0)), Decimal(limit)

    def jobs(self, ids: Iterable[str]) -> dict[str, RequestLog]:
        """Return the job rows with these ids, their attempts loaded."""
        wanted = list(ids)
        with self.session() as session:
            rows = {}
            for start in range(0, len(wanted), 500):
                for row in session.scalars(select(RequestLog).where(RequestLog.id.in_(wanted[start : start + 500]))):
                    _ = row.attempts
                    rows[row.id] = row
            return rows

    def jobs_where(self, *conditions: Any) -> dict[str, RequestLog]:
        with self.session() as session:
            ids = list(session.scalars(select(RequestLog.id).where(*conditions)))
        return self.jobs(ids)

    def open_jobs(self) -> int:
        with self.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(RequestLog)
                    .where(RequestLog.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                )
                or 0
            )

    def wait_terminal(self, ids: Iterable[str], *, timeout_s: float) -> dict[str, RequestLog]:
        """Wait until these jobs are terminal or `timeout_s` passes; return their rows as they are then."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.jobs(wanted)
            if all(row.status.is_terminal for row in rows.values()) or time.monotonic() >= deadline:
                return rows
            time.sleep(0.3)

    def drain(self, *, timeout_s: float) -> int:
        """Wait until no job is queued or running; return how many still are."""
        if self.engine is None:
            return 0
        deadline = time.monotonic() + timeout_s
        while (left := self.open_jobs()) and time.monotonic() < deadline:
            time.sleep(0.3)
        return left

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    def forget_circuits(self) -> None:
        """Close every circuit, so that one scenario's faults do not route the next one."""
        with self.redis() as client:
            keys = list(client.scan_iter("model_router:circuit:*", count=1000))
            if keys:
                client.delete(*keys)


def stack_environment(settings: dict[str, str], *, database_url: str, redis_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(OWN_SETTINGS)}
    env.update(settings, DATABASE_URL=database_url, REDIS_URL=redis_url)
    return env


def _sqlalchemy_url(database_url: str) -> str:
    return database_url.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def running_bench(
    profile: str | None, *, work_dir: Path, quick: bool, overrides: dict[str, str] | None = None
) -> Iterator[Bench]:
    """Start what `profile` needs (None: only a private Redis) with `overrides` on top of its settings."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        private_redis = PrivateRedis(work_dir=work_dir)
        cleanup.callback(private_redis.close)
        private_redis.start()
        if profile is None:
            yield Bench(redis_url=private_redis.url, work_dir=work_dir, quick=quick, private_redis=private_redis)
            return
        settings = {**SETTINGS, **PROFILES[profile], **(overrides or {})}
        database_url = cleanup.enter_context(temporary_postgres_database("model_router_guarantees"))
        migrate.upgrade("head", database_url=_sqlalchemy_url(database_url))
        env = stack_environment(settings, database_url=database_url, redis_url=private_redis.url)
        stack = Stack(
            env=env, log_dir=work_dir, beat=True, web_workers=2, worker_queues=WORKER_QUEUES,
            worker_concurrency=WORKER_SLOTS, worker_pool="gevent",
        )  # fmt: skip
        cleanup.callback(stack.stop)
        stack.start()
        engine = create_engine(_sqlalchemy_url(database_url))
        cleanup.callback(engine.dispose)
        bench = Bench(
            redis_url=private_redis.url, work_dir=work_dir, quick=quick, stack=stack, engine=engine,
            private_redis=private_redis, settings=settings,
        )  # fmt: skip
        bench.configure_sim()
        yield bench
