"""A worker killed outright (SIGKILL) with jobs in flight: another worker finishes them long before the lease.

The real stack on PostgreSQL (gunicorn, gevent Celery workers, beat, the simulator answering in 6 s, a lease of
300 s, heartbeats every second, the reaper every 2 s). One worker takes every job; a second worker starts; the
first is killed while its upstream calls are in flight, so nothing hands its jobs back. Once its heartbeat key
has lapsed the reaper ends their leases and sends them again, and the second worker must finish every one of
them, each run twice, charged once: its answered call plus the lost call at its bound.
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

JOBS = 3
LATENCY_S = 6
LEASE_S = 300
# A tenth of the lease: only the dead worker's lapsed heartbeat can get the jobs run again this soon.
WAIT_S = LEASE_S / 10


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    redis_server = PrivateRedis(work_dir=tmp_path)
    redis_server.start()
    try:
        with temporary_postgres_database("model_router_dead_worker") as database_url:
            migrate.upgrade("head", database_url=database_url)
            settings = {
                **QUICK_RETRIES,
                "MONTHLY_BUDGET_LIMIT": "1000",
                "SIM_LATENCY_MS": str(LATENCY_S * 1000),
                "JOB_LEASE_S": str(LEASE_S),
                "WORKER_HEARTBEAT_S": "1",
                "REAPER_INTERVAL_S": "2",
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
                beat=True,
            ) as running:
                yield running, database_url
    finally:
        redis_server.close()


def _statuses(stack: Stack, job_ids: list[str]) -> dict[str, str]:
    return {job_id: http("GET", f"{stack.web}/api/jobs/{job_id}")[2]["status"] for job_id in job_ids}


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


def test_the_jobs_of_a_killed_worker_are_finished_by_another_long_before_their_lease(
    stack: tuple[Stack, str],
) -> None:
    running, database_url = stack
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        _kill_and_take_over(running, engine)
    finally:
        engine.dispose()


def _kill_and_take_over(running: Stack, engine: Engine) -> None:
    # Admission sends one call at a time to an upstream that has not answered yet: let it answer once first.
    status, _, body = http("POST", f"{running.web}/api/prompt", {"prompt": "Killed: warm up", "wait": True})
    assert status == 200, body
    job_ids = []
    for number in range(JOBS):
        status, _, body = http("POST", f"{running.web}/api/prompt", {"prompt": f"Killed {number}: hi", "wait": False})
        assert status == 202, body
        job_ids.append(body["job_id"])
    assert _calls_in_flight(engine, job_ids) == JOBS
    with engine.connect() as connection:
        holders = set(connection.scalars(select(RequestLog.worker).where(RequestLog.id.in_(job_ids))))
    assert len(holders) == 1 and holders.pop().startswith("worker1@")

    running.start_worker("worker2", queues="prompts", concurrency=8)
    running.kill("worker1", signal.SIGKILL)
    killed_at = time.monotonic()

    statuses = _statuses(running, job_ids)
    while set(statuses.values()) - {"succeeded", "failed"} and time.monotonic() - killed_at < WAIT_S:
        time.sleep(0.3)
        statuses = _statuses(running, job_ids)
    assert statuses == dict.fromkeys(job_ids, "succeeded"), running.logs("worker2", tail=80)

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
    # Each job ran twice: the run that died with its worker, and the one that finished it on the other worker.
    assert {job_id: run_count for job_id, run_count, *_ in jobs} == dict.fromkeys(job_ids, 2)
    assert all(worker.startswith("worker2@") for _, _, worker, *_ in jobs)
    for job_id, _, _, cost, unconfirmed in jobs:
        own = {outcome: amount for attempt_job, outcome, amount in attempts if attempt_job == job_id}
        # The call in flight when the worker died is charged at its bound, once; the answered call at what it cost.
        assert sorted(own) == ["ok", "unconfirmed"], own
        assert own["unconfirmed"] == unconfirmed > 0
        assert cost == own["ok"] + own["unconfirmed"]
    assert ledger.reserved == Decimal(0)
    assert ledger.request_count == JOBS + 1
    assert ledger.total_spent == all_jobs_cost
