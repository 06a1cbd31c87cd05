"""A worker told to stop (SIGTERM) with jobs in flight hands them back, and another worker finishes them at once.

The real stack on PostgreSQL (gunicorn, gevent Celery workers, the simulator answering in 6 s, a lease of
300 s, no beat: no reaper could run a job again). One worker takes every job; a second worker starts; the
first gets SIGTERM while its upstream calls are in flight and, WORKER_SHUTDOWN_GRACE_S (1 s) later, hands the
jobs back. The second worker must finish every one of them (a job whose claim was not released would wait for
a reaper that is not running), each run twice, charged once: its answered call plus the lost call at its bound.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
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

pytestmark = pytest.mark.integration

JOBS = 4
LATENCY_S = 6
# Far under the lease: only a hand-back can get the jobs run again this soon (and no reaper runs at all).
WAIT_S = 90


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    redis_server = PrivateRedis(work_dir=tmp_path)
    redis_server.start()
    try:
        with temporary_postgres_database("model_router_shutdown") as database_url:
            migrate.upgrade("head", database_url=database_url)
            settings = {
                **QUICK_RETRIES,
                "MONTHLY_BUDGET_LIMIT": "1000",
                "SIM_LATENCY_MS": str(LATENCY_S * 1000),
                "JOB_LEASE_S": "300",
                "WORKER_SHUTDOWN_GRACE_S": "1",
                "ESCALATION_ENABLED": "false",
                "RESPONSE_CACHE_ENABLED": "false",
                "REQUIRE_API_KEY": "false",
            }
            with running_stack(
                database_url=database_url,
                redis_url=redis_server.url,
                log_dir=tmp_path,
                settings=settings,
                worker_queues=("prompts",),
                worker_concurrency=(8,),
                worker_pool="gevent",
            ) as running:
                yield running, database_url
    finally:
        redis_server.close()


def _statuses(stack: Stack, job_ids: list[str]) -> dict[str, str]:
    return {job_id: http("GET", f"{stack.web}/api/jobs/{job_id}")[2]["status"] for job_id in job_ids}


def _wait_until(stack: Stack, job_ids: list[str], wanted: set[str]) -> dict[str, str]:
    deadline = time.monotonic() + WAIT_S
    statuses = _statuses(stack, job_ids)
    while set(statuses.values()) - wanted and time.monotonic() < deadline:
        time.sleep(0.3)
        statuses = _statuses(stack, job_ids)
    return statuses


def _calls_in_flight(engine: Engine, job_ids: list[str]) -> int:
    """Wait until every job has an upstream call in flight (noted on it), or the wait ends; return how many do."""
    deadline = time.monotonic() + WAIT_S
    while True:
        with engine.connect() as connection:
            noted = connection.scalar(
                select(func.count()).where(RequestLog.id.in_(job_ids), RequestLog.in_flight_cost > 0)
            )
        if noted == len(job_ids) or time.monotonic() > deadline:
            return noted
        time.sleep(0.2)


def test_a_stopping_worker_hands_its_jobs_to_another_which_finishes_them_charged_once(
    stack: tuple[Stack, str],
) -> None:
    running, database_url = stack
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        _hand_back_and_finish(running, engine)
    finally:
        engine.dispose()


def _hand_back_and_finish(running: Stack, engine: Engine) -> None:
    # Admission sends one call at a time to an upstream that has not answered yet: let it answer once first.
    status, _, body = http("POST", f"{running.web}/api/prompt", {"prompt": "Shutdown: warm up", "wait": True})
    assert status == 200, body
    job_ids = []
    for number in range(JOBS):
        status, _, body = http("POST", f"{running.web}/api/prompt", {"prompt": f"Shutdown {number}: hi", "wait": False})
        assert status == 202, body
        job_ids.append(body["job_id"])
    assert _calls_in_flight(engine, job_ids) == JOBS

    running.start_worker("worker2", queues="prompts", concurrency=8)
    running.kill("worker1", signal.SIGTERM)
    stopped = running.logs("worker1", tail=400)
    assert f"handed back {JOBS} jobs at shutdown" in stopped
    # The stopping worker took none of them back: it stopped consuming at SIGTERM.
    assert " run=2" not in stopped

    assert _wait_until(running, job_ids, {"succeeded", "failed", "cancelled"}) == dict.fromkeys(job_ids, "succeeded")
    with engine.connect() as connection:
        jobs = connection.execute(
            select(RequestLog.id, RequestLog.run_count, RequestLog.cost, RequestLog.unconfirmed_cost).where(
                RequestLog.id.in_(job_ids)
            )
        ).all()
        attempts = connection.execute(
            select(RequestAttempt.job_id, RequestAttempt.outcome, RequestAttempt.cost).where(
                RequestAttempt.job_id.in_(job_ids)
            )
        ).all()
        all_jobs_cost = connection.scalar(select(func.sum(RequestLog.cost)))
        ledger = connection.execute(
            select(MonthlyBudget.total_spent, MonthlyBudget.reserved, MonthlyBudget.request_count)
        ).one()
    # Each job ran twice: the run that was handed back, and the one that finished it.
    assert {job_id: run_count for job_id, run_count, *_ in jobs} == dict.fromkeys(job_ids, 2)
    for job_id, _, cost, unconfirmed in jobs:
        own = {outcome: amount for attempt_job, outcome, amount in attempts if attempt_job == job_id}
        # The call in flight at the hand-back is charged at its bound, once; the answered call at what it cost.
        assert sorted(own) == ["ok", "unconfirmed"], own
        assert own["unconfirmed"] == unconfirmed > 0
        assert cost == own["ok"] + own["unconfirmed"]
    assert ledger.reserved == Decimal(0)
    assert ledger.request_count == JOBS + 1
    assert ledger.total_spent == all_jobs_cost
