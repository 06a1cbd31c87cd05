"""Celery tasks: each takes plain values, builds nothing itself, and calls one shared use case."""

from __future__ import annotations

import contextlib
import time

import redis
from celery import shared_task
from celery.signals import worker_process_init
from celery.signals import worker_ready
from celery.signals import worker_shutting_down
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from shared.config import get_settings
from shared.errors import ConfigError
from shared.jobs import batches
from shared.jobs import idempotency
from shared.jobs import lifecycle
from shared.jobs import reaper
from shared.jobs import runs
from shared.jobs import webhooks
from shared.jobs.views import batch_body
from shared.jobs.views import job_body
from shared.security import masking
from shared.security import sealing
from shared.store import redis_clients
from shared.store.types import utcnow
from worker import broker_messages
from worker import presence
from worker import runtime
from worker import shutdown
from worker.celery_app import ALERT_DELIVERY_TASK
from worker.celery_app import BATCH_QUEUE
from worker.celery_app import CALLBACK_DELIVERY_TASK
from worker.celery_app import PROMPTS_QUEUE

logger = get_task_logger(__name__)

# Infrastructure faults only: upstream failures are retried inside the job by the LLM client.
INFRASTRUCTURE_ERRORS = (OperationalError, redis.ConnectionError)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    runtime.reset()


# The worker's consumer, remembered when it is ready, so that a warm shutdown can stop it consuming at once.
_consumer: object = None


@worker_ready.connect
def _remember_consumer(sender: object = None, **_: object) -> None:
    global _consumer
    _consumer = sender


@worker_shutting_down.connect
def _hand_back_at_grace(how: str = "Warm", **_: object) -> None:
    """On a warm shutdown (SIGTERM): stop taking jobs at once, and hand back those still running
    WORKER_SHUTDOWN_GRACE_S later (worker.shutdown).

    A cold shutdown cancels every run at once, and Celery redelivers their messages itself.
    """
    if how != "Warm":
        return
    consumer = _consumer
    if consumer is not None:
        shutdown.later(0, lambda: shutdown.stop_consuming(consumer))
    shutdown.later(get_settings().worker_shutdown_grace_s, _hand_back_held)


def _hand_back_held() -> None:
    held = runtime.held_claims()
    if held is None:
        return
    shutdown.hand_back(held, deps=runtime.get_deps(), enqueue=lambda job_id, batch: enqueue_job(job_id, batch=batch))


@shared_task(
    name="jobs.run",
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=10,
)
def run_job(job_id: str, deadline_at: float | None = None, admitted: str | None = None) -> str | None:
    """Route, call and settle one job; `deadline_at` and `admitted` come from a run that waited for admission."""
    # The run's time limits count from here, as Celery's do.
    started = time.monotonic()
    resume = None if deadline_at is None else runs.Resume(deadline_at=deadline_at, admitted=admitted)
    # The node name its heartbeat key carries: while that key lives, the reaper leaves the claim to its lease.
    worker = run_job.request.hostname
    result = runs.run(job_id, deps=runtime.get_deps(), started=started, resume=resume, worker=worker)
    if isinstance(result, runs.Deferred):
        # The job waits in the broker, not in a worker: it is run again when admission lets it in.
        run_job.apply_async(
            args=[job_id],
            kwargs={"deadline_at": result.resume.deadline_at, "admitted": result.resume.admitted},
            countdown=result.wait_s,
            queue=BATCH_QUEUE if result.batch else PROMPTS_QUEUE,
        )
        return "deferred"
    if isinstance(result, runs.Busy):
        # Another run holds the lease (a redelivered message, say); if that run dies, the reaper
        # re-enqueues the job once its worker's heartbeat key is gone, or its lease lapses.
        logger.info("job is claimed elsewhere until %s job_id=%s", result.lease_expires_at.isoformat(), job_id)
        return None
    logger.info("job done job_id=%s status=%s", job_id, result)
    if result is not None:
        settle_tokens(job_id)
    return None if result is None else str(result)


def settle_tokens(job_id: str) -> None:
    """Correct the tokens-per-minute window the job was counted in by its real tokens (shared.ledger.token_rate)."""
    deps = runtime.get_deps()

    def actual_tokens() -> int:
        with deps.sessions() as session:
            return lifecycle.get_or_raise(session, job_id=job_id).tokens_used

    runtime.get_token_windows(deps.settings.redis_url).settle(job_id, actual_tokens=actual_tokens)


@shared_task(name="jobs.reap", autoretry_for=INFRASTRUCTURE_ERRORS, max_retries=3)
def reap_jobs() -> dict[str, int]:
    """Re-enqueue jobs whose worker or message was lost; fail those beyond saving."""
    deps = runtime.get_deps()
    with contextlib.closing(redis_clients.fast_failing(deps.settings.redis_url)) as client:
        swept = reaper.sweep(
            sessions=deps.sessions,
            settings=deps.settings,
            messages=lambda: broker_messages.job_messages(reap_jobs.app, queues=(PROMPTS_QUEUE, BATCH_QUEUE)),
            alive=lambda workers: presence.find_alive(reap_jobs.app, client, workers),
        )
    for job_id, in_batch in swept.requeued:
        enqueue_job(job_id, batch=in_batch)
    for finished in swept.failed:
        deps.on_finished(finished.job_id)
        runs.announce(finished, deps=deps)
    with deps.sessions.begin() as session:
        purged = idempotency.purge(session, now=utcnow())
    return {"requeued": len(swept.requeued), "failed": len(swept.failed), "idempotency_keys_purged": purged}


def enqueue_job(job_id: str, *, batch: bool = False, producer: object = None) -> None:
    """Send a job to its queue: batch items never wait behind, nor hold up, single prompts."""
    run_job.apply_async(args=[job_id], queue=BATCH_QUEUE if batch else PROMPTS_QUEUE, producer=producer)


@shared_task(name=ALERT_DELIVERY_TASK, bind=True, acks_late=True)
def deliver_alert(self, payload: dict[str, object]) -> int | None:
    """POST one budget alert to ALERT_WEBHOOK_URL, signed; retried with backoff, never blocking a request."""
    settings = runtime.get_deps().settings
    if settings.alert_webhook_url is None:
        return 0
    outcome = webhooks.deliver(
        settings.alert_webhook_url,
        payload,
        secret=settings.alert_webhook_secret,
        timeout_s=settings.alert_webhook_timeout_s,
        policy=settings.webhook_policy,
    )
    if outcome.delivered:
        return outcome.status_code
    if not outcome.retry:
        logger.error("alert not delivered: %s", outcome.error)
        return None
    if self.request.retries >= settings.alert_webhook_max_retries:
        logger.error("giving up on an alert after %d attempts (%s)", self.request.retries + 1, outcome.error)
        return outcome.status_code
    countdown = min(2**self.request.retries, 300)
    logger.warning("alert delivery failed (%s); retry %d in %ss", outcome.error, self.request.retries + 1, countdown)
    raise self.retry(countdown=countdown, max_retries=settings.alert_webhook_max_retries)


@shared_task(
    name=CALLBACK_DELIVERY_TASK, bind=True, acks_late=True, autoretry_for=INFRASTRUCTURE_ERRORS, max_retries=10
)
def deliver_callback(self, resource: str, resource_id: str, first_attempt_at: float | None = None) -> int | None:
    """POST a finished job or batch to its callback_url, signed; retried with backoff, recorded per attempt.

    The URL is stored sealed (shared.security.sealing) and opened here only; logs and records show it masked.
    """
    deps = runtime.get_deps()
    settings = deps.settings
    first_attempt_at = first_attempt_at or time.time()
    with deps.sessions() as session:
        if resource == "batch":
            view = batches.get_view(session, batch_id=resource_id)
            sealed, payload = view.batch.callback_url, {"event": "batch.completed", **batch_body(view)}
        else:
            job = lifecycle.get_or_raise(session, job_id=resource_id)
            sealed, payload = job.callback_url, {"event": "job.finished", **job_body(job)}
    if sealed is None:
        return None
    try:
        url = sealing.require(settings).open(sealed)
    except (sealing.Unreadable, ConfigError) as exc:
        logger.error("cannot deliver the %s %s webhook: %s", resource, resource_id, exc)
        return None
    outcome = webhooks.deliver(
        url,
        payload,
        secret=settings.webhook_secret,
        timeout_s=settings.webhook_timeout_s,
        policy=settings.webhook_policy,
    )
    with deps.sessions.begin() as session:
        attempt = webhooks.record_attempt(
            session, resource=resource, resource_id=resource_id, url=url, status_code=outcome.status_code,
            error=outcome.error, delivered=outcome.delivered,
        )  # fmt: skip
    if outcome.delivered:
        return outcome.status_code
    where = masking.mask_url(url, path=False)
    countdown = min(2 ** (attempt - 1), 300)
    if not outcome.retry or time.time() + countdown - first_attempt_at > settings.webhook_retry_for_s:
        logger.warning(
            "giving up on %s %s webhook to %s after %d attempts (%s)", resource, resource_id, where, attempt,
            outcome.error,
        )  # fmt: skip
        return outcome.status_code
    logger.info(
        "webhook for %s %s to %s failed (%s); retry %d in %ss", resource, resource_id, where, outcome.error, attempt,
        countdown,
    )  # fmt: skip
    # Bounded by WEBHOOK_RETRY_FOR_S above, not by a retry count.
    raise self.retry(
        args=[resource, resource_id, first_attempt_at], countdown=countdown, max_retries=self.request.retries + 1
    )
