"""Celery tasks: each takes plain values, builds nothing itself, and calls one shared use case."""

from __future__ import annotations

import httpx
import redis
from celery import shared_task
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from shared import alerts
from shared import jobs
from shared import reaper
from worker import runtime

logger = get_task_logger(__name__)

# Infrastructure faults only: upstream failures are retried inside the job by the LLM client.
INFRASTRUCTURE_ERRORS = (OperationalError, redis.ConnectionError)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    runtime.reset()


@shared_task(
    name="jobs.run",
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=10,
)
def run_job(job_id: str) -> str | None:
    """Route, call and settle one job."""
    result = jobs.run(job_id, deps=runtime.get_deps())
    if isinstance(result, jobs.Busy):
        # Another run holds the lease (a redelivered message, say); if that run dies, the reaper
        # re-enqueues the job once the lease lapses.
        logger.info("job is claimed elsewhere until %s job_id=%s", result.lease_expires_at.isoformat(), job_id)
        return None
    logger.info("job done job_id=%s status=%s", job_id, result)
    return None if result is None else str(result)


@shared_task(name="jobs.reap", autoretry_for=INFRASTRUCTURE_ERRORS, max_retries=3)
def reap_jobs() -> dict[str, int]:
    """Re-enqueue jobs whose worker or message was lost; fail those beyond saving."""
    deps = runtime.get_deps()
    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings)
    for job_id in swept.requeued:
        run_job.apply_async(args=[job_id])
    for job_id in swept.failed:
        deps.on_finished(job_id)
    return {"requeued": len(swept.requeued), "failed": len(swept.failed)}


@shared_task(name="alerts.deliver", bind=True, acks_late=True)
def deliver_alert(self, payload: dict[str, object]) -> int:
    """POST one budget alert to ALERT_WEBHOOK_URL, signed; retried with backoff, never blocking a request."""
    settings = runtime.get_deps().settings
    if settings.alert_webhook_url is None:
        return 0
    body = alerts.encode(payload)
    headers = {"Content-Type": "application/json"}
    if settings.alert_webhook_secret is not None:
        headers[alerts.SIGNATURE_HEADER] = alerts.sign(body, settings.alert_webhook_secret.get_secret_value())
    try:
        response = httpx.post(
            settings.alert_webhook_url, content=body, headers=headers, timeout=settings.alert_webhook_timeout_s
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        countdown = min(2**self.request.retries, 300)
        logger.warning("alert delivery failed (%s); retry %d in %ss", type(exc).__name__, self.request.retries + 1,
                       countdown)  # fmt: skip
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.alert_webhook_max_retries) from None
    return response.status_code
