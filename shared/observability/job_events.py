"""What a job's life tells operators: one structured log line per event, and the job metrics.

Events: accepted (web, after the commit that queued it), cached (web, a job answered from the response
cache, which counts as a cache hit and not as a finished job), started (worker, after its claim), attempt (one
per upstream call, once the run is recorded), finished (after the commit that ended it, whoever ended it:
a run, the reaper, a cancel), usage_over_bound (with `finished`, a warning, for a job the upstream billed more
than its bound). Metrics are recorded with `finished`, so a job counts once however many
times its message was delivered. Prompt text appears only when LOG_PROMPTS=true.
"""

from __future__ import annotations

import logging

from shared.jobs.dispatch import Outcome
from shared.jobs.endings import Finished
from shared.jobs.lifecycle import JobRequest
from shared.observability import logs
from shared.observability import metrics

logger = logging.getLogger(__name__)


def accepted(job_id: str, *, request: JobRequest, log_prompts: bool, batch_id: str | None = None) -> None:
    """Log a job that was just committed as queued."""
    values: dict[str, object] = {
        "event": "job_accepted",
        "job_id": job_id,
        "batch_id": batch_id,
        "requested_model": request.model,
        "requested_tier": request.tier,
        "preference": request.preference,
        "max_tokens": request.max_tokens,
        "prompt_chars": len(request.prompt),
    }
    if log_prompts:
        values["prompt"] = request.prompt
    logger.info("job accepted", extra=logs.fields(**values))


def served_from_cache(job_id: str, *, model: str, tier: str) -> None:
    """Log and count a job answered from the response cache; call once, after the commit that recorded it."""
    metrics.record_cache_hit(model=model, tier=tier)
    logger.info(
        "job answered from cache",
        extra=logs.fields(event="job_cached", job_id=job_id, status="succeeded", model=model, tier=tier),
    )


def started(job_id: str, *, run_count: int) -> None:
    """Log a run that just claimed its job."""
    logger.info("job started", extra=logs.fields(event="job_started", job_id=job_id, run=run_count))


def finished(done: Finished, *, outcome: Outcome | None = None) -> None:
    """Log and count a job that just reached its terminal state; call once, after that commit.

    `outcome` is the run's answer when a run ended the job; the reaper and cancels end jobs without one.
    """
    if outcome is not None:
        _attempts(done.job_id, outcome)
    else:
        # Ended without a run's answer (the reaper, a run that could not record one): its lost calls' charge.
        metrics.record_unconfirmed(model=done.model, cost=done.unconfirmed_cost)
    if done.overrun is not None:
        _over_bound(done)
    if done.usage_invalid:
        _usage_invalid(done)
    status = done.status.value
    metrics.record_job_finished(tier=done.tier, model=done.model, outcome=status, error_code=done.error_code)
    values: dict[str, object] = {
        "event": "job_finished",
        "job_id": done.job_id,
        "status": status,
        "model": done.model,
        "tier": done.tier,
        "error_code": done.error_code,
        "unconfirmed_cost": str(done.unconfirmed_cost),
    }
    if outcome is not None:
        values.update(
            cost=str(outcome.cost),
            latency_ms=outcome.latency_ms,
            retries=outcome.retry_count,
            escalated=outcome.escalated,
            difficulty=round(outcome.difficulty.score, 4),
        )
    # The message keeps the words of the line operators already search for.
    logger.info("job finished", extra=logs.fields(**values))


def _over_bound(done: Finished) -> None:
    overrun = done.overrun
    assert overrun is not None
    metrics.record_usage_over_bound(model=overrun.model)
    logger.warning(
        "upstream billed a job more than its bound; recorded as billed, its budget scopes are held",
        extra=logs.fields(
            event="usage_over_bound",
            job_id=done.job_id,
            model=overrun.model,
            cost=str(overrun.cost),
            reserved=str(overrun.reserved),
            attempts=overrun.billed(),
        ),
    )


def _usage_invalid(done: Finished) -> None:
    for model in done.usage_invalid:
        metrics.record_usage_invalid(model=model)
    logger.warning(
        "upstream reported usage that cannot be true; its calls are charged at their bounds",
        extra=logs.fields(event="usage_invalid", job_id=done.job_id, models=list(done.usage_invalid)),
    )


def _attempts(job_id: str, outcome: Outcome) -> None:
    metrics.record_attempts(outcome.attempts)
    if outcome.escalated:
        metrics.record_escalation(**_escalation_tiers(outcome))
    for seq, (purpose, record) in enumerate(outcome.attempts, start=1):
        logger.info(
            "job attempt",
            extra=logs.fields(
                event="job_attempt",
                job_id=job_id,
                seq=seq,
                purpose=purpose,
                model=record.model,
                tier=record.tier,
                outcome=record.outcome,
                error_class=record.error_class,
                status_code=record.status_code,
                latency_ms=record.latency_ms,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cost=str(record.cost),
            ),
        )


def _escalation_tiers(outcome: Outcome) -> dict[str, str]:
    """Return the tier whose answer was unsure and the tier the job escalated to."""
    from_tier = to_tier = metrics.NONE
    for purpose, record in outcome.attempts:
        if purpose == "escalation":
            to_tier = record.tier
            break
        if record.outcome == "ok":
            from_tier = record.tier
    return {"from_tier": from_tier, "to_tier": to_tier}
