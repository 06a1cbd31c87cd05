"""Celery tasks: each takes ids, builds nothing itself, and calls one shared use case."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

import redis
from celery import Task
from celery import shared_task
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from shared import jobs
from worker import runtime

logger = get_task_logger(__name__)

# Infrastructure faults only: upstream failures are retried inside the job by the LLM client.
INFRASTRUCTURE_ERRORS = (OperationalError, redis.ConnectionError)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    runtime.reset()


@shared_task(
    name="jobs.run",
    bind=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=10,
)
def run_job(self: Task, job_id: str) -> str | None:
    """Route, call and settle one job."""
    result = jobs.run(job_id, deps=runtime.get_deps())
    if isinstance(result, jobs.Busy):
        # Another run holds the lease (a redelivery after a crash, say): come back when it lapses.
        wait_s = max((result.lease_expires_at - datetime.now(UTC)).total_seconds(), 0) + 1
        logger.info("job is claimed elsewhere, retrying in %.0fs job_id=%s", wait_s, job_id)
        raise self.retry(countdown=wait_s, max_retries=None)
    logger.info("job done job_id=%s status=%s", job_id, result)
    return None if result is None else str(result)
