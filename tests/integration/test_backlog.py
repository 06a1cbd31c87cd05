"""A backlog is not lost messages, and a hanging upstream does not outlast its run: the real stack, slowly.

The real stack on PostgreSQL (gunicorn, Celery workers: one on prompts, with beat's reaper sweeping every
second, one on batch, each with 2 slots; the simulator answering in 1.5 s) with a lease of 20 s:

- 60 batch items take about 45 s to drain, so most of them wait in the batch queue for longer than a lease.
  Each must be called upstream exactly once and succeed, and no message may be sent twice.
- A job asking for the longest deadline against an upstream that never answers ends failed once, with one
  upstream call: its deadline and its recording end before Celery's soft time limit, which ends before the
  lease, so the reaper never finds it running and runs it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select

from shared.store import migrate
from shared.store.models import RequestLog
from tests.support.chaos import PrivateRedis
from tests.support.databases import temporary_postgres_database
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import running_stack
from tests.support.stack import upstream_calls

pytestmark = pytest.mark.integration

ITEMS = 60
SLOTS = 2
LATENCY_S = 1.5
LEASE_S = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis_server = PrivateRedis(work_dir=tmp_path_factory.mktemp("redis"))
    redis_server.start()
    try:
        with temporary_postgres_database() as database_url:
            migrate.upgrade("head", database_url=database_url)
            settings = {
                **QUICK_RETRIES,
                "MONTHLY_BUDGET_LIMIT": "1000",
                "SIM_LATENCY_MS": str(int(LATENCY_S * 1000)),
                "JOB_LEASE_S": str(LEASE_S),
                "REAPER_INTERVAL_S": "1",
                # One upstream call per item: an unsure answer would be asked again of the next tier.
                "ESCALATION_ENABLED": "false",
            }
            with running_stack(
                database_url=database_url,
                redis_url=redis_server.url,
                log_dir=tmp_path_factory.mktemp("logs"),
                settings=settings,
                worker_queues=("prompts", "batch"),
                worker_concurrency=(SLOTS, SLOTS),
                # Prefork: the pool whose soft time limit interrupts a task (gevent's enforces only the hard one).
                worker_pool="prefork",
                beat=True,
            ) as stack:
                yield stack
    finally:
        redis_server.close()


def _log(stack: Stack, name: str) -> str:
    return Path(stack.log_dir / f"{name}.log").read_text(errors="replace")


def test_a_batch_draining_slower_than_a_lease_is_called_once_per_item_and_succeeds(stack: Stack) -> None:
    items = [{"prompt": f"Item {number}: what is {number} + 1?", "tier": "cheap"} for number in range(ITEMS)]
    status, _, accepted = http("POST", f"{stack.web}/api/batch", {"prompts": items})
    assert status == 202, accepted

    deadline = time.monotonic() + ITEMS * LATENCY_S / SLOTS * 3
    while True:
        body = http("GET", f"{stack.web}/api/batch/{accepted['batch_id']}")[2]
        if body["status"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(1)

    assert (body["status"], body["succeeded"], body["failed"]) == ("completed", ITEMS, 0)
    assert sum(upstream_calls(stack).values()) == ITEMS
    # The reaper swept about 45 times while items waited past a lease, and re-sent nothing.
    assert "jobs.reap" in _log(stack, "worker1")
    assert "reaper requeued" not in _log(stack, "worker1")


def test_a_job_at_the_longest_deadline_against_a_hanging_upstream_fails_once(stack: Stack) -> None:
    http("POST", f"{stack.sim}/sim/config", {"latency_ms": 600_000})
    calls_before = sum(upstream_calls(stack).values())
    status, _, accepted = http(
        "POST", f"{stack.web}/api/prompt", {"prompt": "Hang on.", "tier": "cheap", "deadline_s": 600, "wait": False}
    )
    assert status == 202, accepted

    # Past the job's deadline and a whole lease more, with the reaper sweeping every second.
    deadline = time.monotonic() + 3 * LEASE_S
    while True:
        body = http("GET", f"{stack.web}/api/jobs/{accepted['job_id']}")[2]
        if body["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert body["status"] == "failed", body
    time.sleep(LEASE_S + 2)

    engine = create_engine(stack.env["DATABASE_URL"])
    try:
        with engine.connect() as connection:
            run_count = connection.scalar(select(RequestLog.run_count).where(RequestLog.id == accepted["job_id"]))
    finally:
        engine.dispose()
    assert run_count == 1
    assert sum(upstream_calls(stack).values()) - calls_before == 1
