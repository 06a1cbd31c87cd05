"""A worker told to stop (SIGTERM) with jobs in flight hands them back, and another worker finishes them at once.

The real stack on PostgreSQL (gunicorn, gevent Celery workers, the simulator answering in 6 s, a lease of
300 s, no beat: no reaper could run a job again). One worker takes every job; a second worker starts; the
first gets SIGTERM while its upstream calls are in flight and, WORKER_SHUTDOWN_GRACE_S (1 s) later, hands the
jobs back. The second worker must finish every one of them (a job whose claim was not released would wait for
a reaper that is not running), each run twice, charged once: its answered call plus the lost call at its bound.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.support.stack import Stack
from tests.support.takeover import assert_taken_over_and_charged_once
from tests.support.takeover import send_jobs_in_flight
from tests.support.takeover import slow_stack
from tests.support.takeover import wait_until_ended

pytestmark = pytest.mark.integration

JOBS = 4
# Far under the lease: only a hand-back can get the jobs run again this soon (and no reaper runs at all).
WAIT_S = 90


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, Engine]]:
    settings = {"JOB_LEASE_S": "300", "WORKER_SHUTDOWN_GRACE_S": "1"}
    with slow_stack(tmp_path, name="model_router_shutdown", settings=settings) as running:
        yield running


def test_a_stopping_worker_hands_its_jobs_to_another_which_finishes_them_charged_once(
    stack: tuple[Stack, Engine],
) -> None:
    running, engine = stack
    job_ids = send_jobs_in_flight(running, engine, jobs=JOBS, label="Shutdown", wait_s=WAIT_S)

    running.start_worker("worker2", queues="prompts", concurrency=8)
    running.kill("worker1", signal.SIGTERM)
    stopped = running.logs("worker1", tail=400)
    assert f"handed back {JOBS} jobs at shutdown" in stopped
    # The stopping worker took none of them back: it stopped consuming at SIGTERM.
    assert " run=2" not in stopped

    assert wait_until_ended(running, job_ids, wait_s=WAIT_S) == dict.fromkeys(job_ids, "succeeded")
    assert_taken_over_and_charged_once(engine, job_ids)
