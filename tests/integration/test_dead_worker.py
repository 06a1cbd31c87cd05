"""A worker killed outright (SIGKILL) with jobs in flight: another worker finishes them long before the lease.

The real stack on PostgreSQL (gunicorn, gevent Celery workers, beat, the simulator answering in 6 s, a lease of
300 s, heartbeats every second, the reaper every 2 s). One worker takes every job; a second worker starts; the
first is killed while its upstream calls are in flight, so nothing hands its jobs back. Once its heartbeat key
has lapsed the reaper ends their leases and sends them again, and the second worker must finish every one of
them, each run twice, charged once: its answered call plus the lost call at its bound.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy import select

from shared.store.models import RequestLog
from tests.support.stack import Stack
from tests.support.takeover import assert_taken_over_and_charged_once
from tests.support.takeover import send_jobs_in_flight
from tests.support.takeover import slow_stack
from tests.support.takeover import wait_until_ended

pytestmark = pytest.mark.integration

JOBS = 3
LEASE_S = 300
# A tenth of the lease: only the dead worker's lapsed heartbeat can get the jobs run again this soon.
WAIT_S = LEASE_S / 10


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, Engine]]:
    settings = {"JOB_LEASE_S": str(LEASE_S), "WORKER_HEARTBEAT_S": "1", "REAPER_INTERVAL_S": "2"}
    with slow_stack(tmp_path, name="model_router_dead_worker", settings=settings, beat=True) as running:
        yield running


def test_the_jobs_of_a_killed_worker_are_finished_by_another_long_before_their_lease(
    stack: tuple[Stack, Engine],
) -> None:
    running, engine = stack
    job_ids = send_jobs_in_flight(running, engine, jobs=JOBS, label="Killed", wait_s=WAIT_S)
    with engine.connect() as connection:
        holders = set(connection.scalars(select(RequestLog.worker).where(RequestLog.id.in_(job_ids))))
    assert len(holders) == 1 and holders.pop().startswith("worker1@")

    running.start_worker("worker2", queues="prompts", concurrency=8)
    running.kill("worker1", signal.SIGKILL)
    statuses = wait_until_ended(running, job_ids, wait_s=WAIT_S)
    assert statuses == dict.fromkeys(job_ids, "succeeded"), running.logs("worker2", tail=80)
    jobs = assert_taken_over_and_charged_once(engine, job_ids)
    assert all(job.worker.startswith("worker2@") for job in jobs)
