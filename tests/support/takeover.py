"""One worker's jobs taken over by another, on the real stack: what the shutdown and dead-worker suites share.

A stack on PostgreSQL whose simulator answers slowly, so that a worker can be stopped or killed while its
upstream calls are in flight; the jobs sent to it; and the check that each was finished by another run and
charged once: its answered call, plus the call lost with the first run at its bound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import Row
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select

from shared.store import migrate
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from tests.support.chaos import PrivateRedis
from tests.support.databases import temporary_postgres_database
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import running_stack

LATENCY_S = 6
ENDED = frozenset({"succeeded", "failed", "cancelled"})


@contextmanager
def slow_stack(
    tmp_path: Path, *, name: str, settings: dict[str, str], beat: bool = False
) -> Iterator[tuple[Stack, Engine]]:
    """Run a stack (one gevent `prompts` worker, worker1) on a database of its own; yield it and an engine on it."""
    redis_server = PrivateRedis(work_dir=tmp_path)
    redis_server.start()
    try:
        with temporary_postgres_database(name) as database_url:
            migrate.upgrade("head", database_url=database_url)
            own = {
                **QUICK_RETRIES,
                "MONTHLY_BUDGET_LIMIT": "1000",
                "SIM_LATENCY_MS": str(LATENCY_S * 1000),
                "ESCALATION_ENABLED": "false",
                "RESPONSE_CACHE_ENABLED": "false",
                "REQUIRE_API_KEY": "false",
                **settings,
            }
            engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
            try:
                with running_stack(
                    database_url=database_url, redis_url=redis_server.url, log_dir=tmp_path, settings=own,
                    worker_queues=("prompts",), worker_concurrency=(8,), worker_pool="gevent", beat=beat,
                ) as running:  # fmt: skip
                    yield running, engine
            finally:
                engine.dispose()
    finally:
        redis_server.close()


def send_jobs_in_flight(running: Stack, engine: Engine, *, jobs: int, label: str, wait_s: float) -> list[str]:
    """Send `jobs` prompts and return their ids once each has an upstream call in flight (noted on it)."""
    # Admission sends one call at a time to an upstream that has not answered yet: let it answer once first.
    status, _, body = http("POST", f"{running.web}/api/prompt", {"prompt": f"{label}: warm up", "wait": True})
    assert status == 200, body
    job_ids = []
    for number in range(jobs):
        status, _, body = http("POST", f"{running.web}/api/prompt", {"prompt": f"{label} {number}: hi", "wait": False})
        assert status == 202, body
        job_ids.append(body["job_id"])
    deadline = time.monotonic() + wait_s
    while True:
        with engine.connect() as connection:
            noted = connection.scalar(
                select(func.count()).where(RequestLog.id.in_(job_ids), RequestLog.in_flight_cost > 0)
            )
        if noted == len(job_ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert noted == jobs
    return job_ids


def wait_until_ended(running: Stack, job_ids: list[str], *, wait_s: float) -> dict[str, str]:
    """Return each job's status once all have ended, or when `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        statuses = {job_id: http("GET", f"{running.web}/api/jobs/{job_id}")[2]["status"] for job_id in job_ids}
        if not set(statuses.values()) - ENDED or time.monotonic() > deadline:
            return statuses
        time.sleep(0.3)


def assert_taken_over_and_charged_once(engine: Engine, job_ids: list[str]) -> list[Row[Any]]:
    """Check that each job ran twice and is charged once (answered call + lost call at its bound), and that the
    ledger is closed; return the jobs' rows (id, run_count, worker, cost, unconfirmed_cost)."""
    with engine.connect() as connection:
        jobs = connection.execute(
            select(RequestLog.id, RequestLog.run_count, RequestLog.worker, RequestLog.cost, RequestLog.unconfirmed_cost)
            .where(RequestLog.id.in_(job_ids))
        ).all()  # fmt: skip
        attempts = connection.execute(
            select(RequestAttempt.job_id, RequestAttempt.outcome, RequestAttempt.cost).where(
                RequestAttempt.job_id.in_(job_ids)
            )
        ).all()
        all_jobs_cost = connection.scalar(select(func.sum(RequestLog.cost)))
        ledger = connection.execute(
            select(MonthlyBudget.total_spent, MonthlyBudget.reserved, MonthlyBudget.request_count)
        ).one()
    # Each job ran twice: the run the first worker lost, and the one that finished it.
    assert {job.id: job.run_count for job in jobs} == dict.fromkeys(job_ids, 2)
    for job in jobs:
        own = {outcome: amount for attempt_job, outcome, amount in attempts if attempt_job == job.id}
        # The call in flight when the first run ended is charged at its bound, once; the answered one at its cost.
        assert sorted(own) == ["ok", "unconfirmed"], own
        assert own["unconfirmed"] == job.unconfirmed_cost > 0
        assert job.cost == own["ok"] + own["unconfirmed"]
    assert ledger.reserved == Decimal(0)
    assert ledger.request_count == len(job_ids) + 1
    assert ledger.total_spent == all_jobs_cost
    return jobs
