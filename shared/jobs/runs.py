"""Running a job: claim it under a lease, get its answer, then record and settle it under that claim.

Claiming is a conditional UPDATE with a lease and finishing is conditional on still holding that claim, so a
redelivered task never runs a job twice at once and its reservation is settled exactly once. No
transaction stays open across an upstream call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy import bindparam
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker
from tenacity import Retrying
from tenacity import retry_if_exception
from tenacity import stop_after_delay
from tenacity import wait_exponential_jitter

from shared.config import Settings
from shared.jobs import dispatch
from shared.jobs import endings
from shared.jobs import handback
from shared.jobs import lifecycle
from shared.jobs import recording
from shared.jobs import response_cache
from shared.jobs import states
from shared.jobs.views import job_body
from shared.ledger import alerts
from shared.ledger import budget
from shared.ledger import call_bound
from shared.ledger import lost_calls
from shared.observability import job_events
from shared.observability import logs
from shared.routing.catalog import Catalog
from shared.routing.catalog import ModelSpec
from shared.store import disconnects
from shared.store import stream_relay
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.session import execute_alone
from shared.store.types import UTCDateTime
from shared.store.types import utcnow
from shared.upstream import token_count
from shared.upstream.admission import Admission
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.deployments import Balancer
from shared.upstream.llm_client import CallerGone
from shared.upstream.llm_client import LLMClient
from shared.upstream.llm_client import StreamInterrupted

logger = logging.getLogger(__name__)


# Claiming and finishing run once per job: both are Core statements on the table, built once, with bound
# parameters (rebuilding a statement per job, and the ORM's bulk-update path, cost more than the SQL itself).
_JOB = RequestLog.__table__.c
_JOB_ID = bindparam("b_job_id")
_NOW = bindparam("b_now", type_=UTCDateTime())

# What a run reads from the job it claims, returned by the claiming UPDATE itself.
CLAIMED_COLUMNS = (
    *(
        _JOB[name]
        for name in (
            "id", "run_count", "prompt", "max_tokens", "preference", "requested_model", "requested_tier", "messages",
            "upstream_options", "stream", "difficulty_estimator", "on_rate_limit", "reserved_cost", "api_key_id",
            "max_tier", "deadline_s", "cache_key", "request_id", "batch_id", "in_flight_cost", "unconfirmed_cost",
            "allowed_models",
        )
    ),
    *(_JOB[column.key] for column in budget.PERIOD_COLUMNS),
)  # fmt: skip
_CLAIM = (
    update(RequestLog.__table__)
    .where(_JOB.id == _JOB_ID, states.CLAIM.allows(now=_NOW))
    .values(
        status=JobStatus.RUNNING,
        started_at=_NOW,
        updated_at=_NOW,
        lease_expires_at=bindparam("b_lease_expires_at", type_=UTCDateTime()),
        run_count=_JOB.run_count + 1,
        worker=bindparam("b_worker"),
    )
    .returning(*CLAIMED_COLUMNS)
)
# A run that waits for admission gives the job back: queued again, its claim (and the run count it took)
# released, only while that claim still holds.
_RELEASE = (
    update(RequestLog.__table__)
    .where(_JOB.id == _JOB_ID, states.RELEASE.allows(run_count=bindparam("b_run_count")))
    .values(status=JobStatus.QUEUED, run_count=_JOB.run_count - 1, lease_expires_at=None, started_at=None,
            updated_at=_NOW)
    .returning(_JOB.id)
)  # fmt: skip


@dataclass(frozen=True)
class Claim:
    """A job this worker now owns, with the fencing value that proves it when finishing."""

    job_id: str
    run_count: int
    request: lifecycle.JobRequest
    period: budget.Period
    reserved_cost: Decimal
    api_key_id: int | None = None
    max_tier: str | None = None
    deadline_s: float = 60.0
    cache_key: str | None = None
    request_id: str | None = None
    batch_id: str | None = None
    # What the calls of earlier, lost runs may have cost, charged at their bounds (shared.ledger.lost_calls).
    lost_cost: Decimal = Decimal(0)
    # When the run's task started (time.monotonic()): its time limits count from there.
    started: float = field(default_factory=time.monotonic)


def announce(finished: endings.Finished, *, deps: RunDeps) -> None:
    """After commit: fire the alerts and callbacks a terminal job set off; one that fails does not stop the rest."""
    for alert in finished.alerts:
        _quietly(deps.on_alert, alert)
    for resource, resource_id in finished.callbacks:
        _quietly(deps.on_callback, resource, resource_id)


@dataclass(frozen=True)
class Resume:
    """What a job that waited for admission carries into its next run."""

    # When its deadline ends (time.time()): counted from its first run, never reset by waiting.
    deadline_at: float
    # The model whose turn was reserved for it (shared.upstream.admission).
    admitted: str | None = None


@dataclass(frozen=True)
class Deferred:
    """The job went back to its queue to wait `wait_s` for admission; run it again then, with `resume`."""

    wait_s: float
    resume: Resume
    batch: bool = False


@dataclass(frozen=True)
class Busy:
    """Another worker holds the job's lease until `lease_expires_at`."""

    lease_expires_at: datetime


@dataclass(frozen=True)
class RunDeps:
    """What running a job needs, built once per worker process."""

    sessions: sessionmaker[Session]
    catalog: Catalog
    settings: Settings
    client: LLMClient
    on_finished: Callable[[str], None] = lambda job_id: None
    # Called after commit, instead of on_finished, with the finished job's body as the API shows it, so that
    # a waiting request answers without reading it back; None: on_finished announces the id alone.
    on_answered: Callable[[str, dict[str, Any]], None] | None = None
    # Called after commit with ("job" | "batch", id) when a callback_url is due a POST.
    on_callback: Callable[[str, str], None] = lambda resource, resource_id: None
    on_alert: Callable[[alerts.Announcement], None] = alerts.log
    sleep: Callable[[float], None] = time.sleep
    breaker: CircuitBreaker | None = None
    # Appends an entry to a streamed job's relay and tells whether its reader asked to cancel the job
    # (shared.store.stream_relay.append); None: streamed jobs are answered whole, like any other.
    relay: Callable[[str, dict[str, str]], bool] | None = None
    # The Redis holding the response cache (shared.jobs.response_cache); None: answers are not kept.
    response_cache: redis.Redis | None = None
    # Admission control per model (shared.upstream.admission); None: calls are not paced.
    admission: Admission | None = None
    # Balances a model's deployments (shared.upstream.deployments); None: tried in the catalog's order.
    balancer: Balancer | None = None
    # The claims this process's runs hold, for a worker that shuts down to hand back (shared.jobs.handback).
    held: handback.HeldClaims | None = None

    @property
    def engine(self) -> Engine:
        return self.sessions.kw["bind"]

    @property
    def answerer(self) -> dispatch.Answerer:
        return dispatch.Answerer(
            catalog=self.catalog, settings=self.settings, client=self.client, breaker=self.breaker, sleep=self.sleep,
            admission=self.admission, balancer=self.balancer,
        )  # fmt: skip


def run(
    job_id: str,
    *,
    deps: RunDeps,
    started: float | None = None,
    resume: Resume | None = None,
    worker: str | None = None,
) -> JobStatus | Busy | Deferred | None:
    """Run the job if it is ours to run; return its final status, Busy, Deferred, or None when already finished.

    `started` is when the task running it started (time.monotonic(); default: now), which its time limits
    (shared.config.TimeLimits) count from. `resume` comes from the run that deferred the job (Deferred).
    `worker` names the worker node running it, whose heartbeat key vouches for the claim (shared.jobs.reaper).
    """
    started = time.monotonic() if started is None else started
    with logs.bound(job_id=job_id):
        claim = _claim(job_id, deps=deps, started=started, worker=worker)
        if not isinstance(claim, Claim):
            return claim
        held = deps.held
        if held is not None:
            held.add(job_id=job_id, run_count=claim.run_count, batch=claim.batch_id is not None,
                     stream=claim.request.stream)  # fmt: skip
        try:
            # Lines logged while running carry the id of the request that created the job.
            with logs.bound(request_id=claim.request_id):
                _quietly(job_events.started, job_id, run_count=claim.run_count)
                return _run_claimed(claim, deps=deps, resume=resume)
        finally:
            if held is not None:
                held.discard(job_id, claim.run_count)


def _run_claimed(claim: Claim, *, deps: RunDeps, resume: Resume | None = None) -> JobStatus | Deferred | None:
    """Answer the claimed job and record it; whatever goes wrong, end it once, with its cost, if it can be."""
    job_id = claim.job_id
    request = claim.request
    relay = deps.relay if request.stream else None
    limits = deps.settings.time_limits
    # Counted from the task's start, so that the run ends before Celery's soft limit, and never past the deadline
    # an earlier run of the job that waited for admission started counting.
    deadline_s = min(claim.deadline_s, limits.max_deadline_s - (time.monotonic() - claim.started))
    if resume is not None:
        deadline_s = min(deadline_s, resume.deadline_at - time.time())
    deadline_at = time.time() + deadline_s
    try:
        outcome = dispatch.answer(
            dispatch.Job(
                prompt=request.prompt,
                max_tokens=request.max_tokens,
                preference=request.preference,
                model=request.model,
                tier=request.tier,
                max_tier=claim.max_tier,
                reserved_cost=claim.reserved_cost,
                deadline_s=deadline_s,
                previous_runs=claim.run_count - 1,
                lost_cost=claim.lost_cost,
                difficulty_estimator=request.difficulty_estimator or deps.settings.difficulty_estimator,
                messages=request.messages,
                options=request.options,
                on_rate_limit=request.on_rate_limit or deps.settings.rate_limit_policy,
                # A streamed job's reader is waiting on this run: it waits in the worker.
                can_defer=relay is None,
                admitted=None if resume is None else resume.admitted,
                allowed_models=request.allowed_models,
            ),
            using=deps.answerer,
            on_delta=None if relay is None else _delta_relay(job_id, relay),
            on_call=lambda bound: lost_calls.note(
                deps.sessions, job_id=job_id, run_count=claim.run_count, amount=bound
            ),
        )
    except Exception:
        logger.exception("the job's run failed job_id=%s", job_id)
        return _fail_unrecorded(claim, "internal_error", "the job's run failed", relay=relay, deps=deps)
    if outcome.deferral is not None:
        return _defer(claim, outcome.deferral, deadline_at=deadline_at, deps=deps)
    try:
        finished = _finish_with_retries(claim, outcome, deps=deps)
    except Exception as error:
        if disconnects.is_disconnect(error):
            if relay is not None:
                # The job stays running until the reaper takes it over; its reader need not wait that long.
                _quietly(relay, job_id, _unrecorded_entry())
            raise
        # Retrying cannot fix it (a value the table refuses, say): fail the job, with its cost, instead of
        # leaving it running for the reaper to run and pay again.
        logger.exception("the job's outcome could not be recorded job_id=%s", job_id)
        return _fail_unrecorded(
            claim, "unrecordable", "the job's outcome could not be recorded", relay=relay, deps=deps,
            at_least=_known_cost(outcome, claim),
        )  # fmt: skip
    if relay is not None:
        # After the commit: a reader that sees the last entry finds the job recorded and settled.
        _quietly(relay, job_id, _last_entry(outcome, recorded=finished is not None))
    if finished is None:
        return None
    # Before the announcement: a client repeating the request as soon as it has the answer must hit.
    _quietly(_keep_answer, claim, outcome, deps=deps)
    _quietly(job_events.finished, finished, outcome=outcome)
    if deps.on_answered is not None and finished.body is not None:
        _quietly(deps.on_answered, job_id, finished.body)
    else:
        _quietly(deps.on_finished, job_id)
    _quietly(announce, finished, deps=deps)
    return finished.status


def _defer(claim: Claim, deferral: dispatch.Deferral, *, deadline_at: float, deps: RunDeps) -> Deferred | None:
    """Give the job back to its queue, unclaimed, to wait for admission; None if the claim was already lost.

    The run made no upstream call, so it leaves nothing to record or charge; its run does not count as one.
    """
    params = {"b_job_id": claim.job_id, "b_run_count": claim.run_count, "b_now": utcnow()}
    if deps.engine.dialect.name == "postgresql":
        released = execute_alone(deps.engine, _RELEASE, params)
    else:
        with deps.sessions.begin() as session:
            released = session.execute(_RELEASE, params).all()
    if not released:
        logger.warning("lost the claim before deferring job_id=%s", claim.job_id)
        return None
    logger.info("job waits %.2f s for admission job_id=%s", deferral.wait_s, claim.job_id)
    return Deferred(
        wait_s=deferral.wait_s,
        resume=Resume(deadline_at=deadline_at, admitted=deferral.admitted),
        batch=claim.batch_id is not None,
    )


def _fail_unrecorded(
    claim: Claim,
    code: str,
    message: str,
    *,
    relay: Callable[[str, dict[str, str]], None] | None,
    deps: RunDeps,
    at_least: Decimal = Decimal(0),
) -> JobStatus | None:
    """End the claimed job failed, charging its calls at their bounds as noted (shared.ledger.lost_calls)."""
    finished = lost_calls.fail(
        deps.sessions, job_id=claim.job_id, where=states.FINISH.allows(run_count=claim.run_count), code=code,
        message=message, now=utcnow(), at_least=at_least,
    )  # fmt: skip
    if relay is not None:
        _quietly(relay, claim.job_id, _unrecorded_entry() if finished is None else {
            "type": stream_relay.ERROR, "code": code, "message": message})  # fmt: skip
    if finished is None:
        return None
    _quietly(job_events.finished, finished)
    _quietly(deps.on_finished, claim.job_id)
    _quietly(announce, finished, deps=deps)
    return finished.status


def _known_cost(outcome: dispatch.Outcome, claim: Claim) -> Decimal:
    """What the outcome says was billed, or nothing if that cannot be true (the calls are then charged at their
    bounds): an amount the reservation could not have covered is no measure of what was billed."""
    try:
        cost = outcome.cost
    except Exception:
        return Decimal(0)
    return cost if cost.is_finite() and 0 < cost <= claim.reserved_cost else Decimal(0)


def _unrecorded_entry() -> dict[str, str]:
    return {"type": stream_relay.ERROR, "code": "unavailable", "message": "the job could not be recorded"}


def _quietly(step: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Run a step that tells about the job (events, relays, announcements) rather than records it: its failure
    is logged, never changes how the job ends, never sends it round the reaper."""
    try:
        step(*args, **kwargs)
    except Exception:
        logger.exception("a step after recording the job failed step=%s", getattr(step, "__name__", step))


def _body_of(ended: Any, attempts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The recorded job as the API shows it, or None (waiters then read it back) if it cannot be built: the
    job is recorded already, and nothing after its commit may fail its run."""
    try:
        return job_body(ended, attempts=attempts)
    except Exception:
        logger.exception("the finished job's body could not be built job_id=%s", getattr(ended, "id", None))
        return None


def _keep_answer(claim: Claim, outcome: dispatch.Outcome, *, deps: RunDeps) -> None:
    """Keep a recorded answer in the response cache, if its request is cacheable and the answer may be reused."""
    if claim.cache_key is None or deps.response_cache is None:
        return
    answer = response_cache.answer_of(outcome, capped=claim.max_tier is not None)
    if answer is not None:
        response_cache.put(deps.response_cache, claim.cache_key, answer, ttl_s=deps.settings.response_cache_ttl_s)


def _delta_relay(job_id: str, relay: Callable[[str, dict[str, str]], bool]) -> Callable[[ModelSpec, str], None]:
    """Return the callback relaying each delta; it raises CallerGone once the reader asked to cancel the job."""
    first = True

    def on_delta(model: ModelSpec, text: str) -> None:
        nonlocal first
        entry = {"type": stream_relay.DELTA, "text": text}
        if first:
            entry.update(model=model.name, tier=model.tier)
            first = False
        if relay(job_id, entry):
            raise CallerGone(f"the client of job {job_id} left its stream")

    return on_delta


def _last_entry(outcome: dispatch.Outcome, *, recorded: bool) -> dict[str, str]:
    """Return the entry that ends a streamed job's relay: its finish and usage, or its error."""
    completion = outcome.completion
    prompt_tokens = sum(record.prompt_tokens for _, record in outcome.attempts)
    completion_tokens = sum(record.completion_tokens for _, record in outcome.attempts)
    common = {
        "prompt_tokens": str(prompt_tokens),
        "completion_tokens": str(completion_tokens),
        "cost": str(outcome.cost),
        "retries": str(outcome.retry_count),
        "difficulty": str(round(outcome.difficulty.score, 4)),
    }
    if outcome.model is not None:
        # An answer without a single delta (empty text) still tells the reader who answered.
        common.update(model=outcome.model.name, tier=outcome.model.tier)
    if completion is not None and recorded:
        return {"type": stream_relay.DONE, "finish_reason": completion.finish_reason or "stop", **common}
    error = outcome.error
    if not recorded:
        code, message = "lost_claim", "the job was taken over by another run"
    else:
        code = error.code if error else "upstream_error"
        message = error.message if error else "the upstream call failed"
        if error is not None and "error_class" in error.details:
            # Lets the reader answer a stream that ran out of time before its first token with a 504.
            common["error_class"] = str(error.details["error_class"])
    return {"type": stream_relay.ERROR, "code": code, "message": message, **common}


def _claim(
    job_id: str, *, deps: RunDeps, started: float | None = None, worker: str | None = None
) -> Claim | Busy | None:
    """Claim the job and read what running it needs in one statement; look at it again only if that fails.

    A claim that finds calls a lost run left noted charges them, and tops the reservation up by as much.
    """
    now = utcnow()
    params = {
        "b_job_id": job_id,
        "b_now": now,
        "b_lease_expires_at": now + timedelta(seconds=deps.settings.job_lease_s),
        "b_worker": worker,
    }
    if deps.engine.dialect.name == "postgresql":
        claimed = execute_alone(deps.engine, _CLAIM, params)
        job = claimed[0] if claimed else None
    else:
        with deps.sessions.begin() as session:
            job = session.execute(_CLAIM, params).one_or_none()
    if job is None:
        with deps.sessions() as session:
            current = session.get(RequestLog, job_id)
            if current is None:
                logger.error("job does not exist job_id=%s", job_id)
            elif current.status is JobStatus.RUNNING and current.lease_expires_at is not None:
                return Busy(lease_expires_at=current.lease_expires_at)
            return None
    reserved_cost, lost_cost = job.reserved_cost, job.unconfirmed_cost
    if job.in_flight_cost > 0:
        with deps.sessions() as session:
            limits = lost_calls.limits_for(session, api_key_id=job.api_key_id, settings=deps.settings)
        reserved_cost += lost_calls.absorb(
            deps.sessions, job_id=job.id, run_count=job.run_count, lost=job.in_flight_cost, limits=limits
        )
        lost_cost += job.in_flight_cost
    return Claim(
        job_id=job.id,
        run_count=job.run_count,
        request=lifecycle.JobRequest(
            prompt=job.prompt,
            max_tokens=job.max_tokens,
            preference=job.preference,
            model=job.requested_model,
            tier=job.requested_tier,
            messages=job.messages,
            options=job.upstream_options,
            stream=job.stream,
            difficulty_estimator=job.difficulty_estimator,
            on_rate_limit=job.on_rate_limit,
            allowed_models=None if job.allowed_models is None else frozenset(job.allowed_models),
        ),
        period=budget.Period.of_job(job),
        reserved_cost=reserved_cost,
        api_key_id=job.api_key_id,
        max_tier=job.max_tier,
        deadline_s=job.deadline_s or deps.settings.default_deadline_s,
        cache_key=job.cache_key,
        request_id=job.request_id,
        batch_id=job.batch_id,
        lost_cost=lost_cost,
        started=time.monotonic() if started is None else started,
    )


def _finish_with_retries(claim: Claim, outcome: dispatch.Outcome, *, deps: RunDeps) -> endings.Finished | None:
    """Record the outcome, retrying while the database is unreachable: the answer in hand is not thrown away.

    Retries stop when the run's time to finish ends (shared.config.TimeLimits), before Celery's soft limit and
    the lease; past the lease another run may take the job over, and the conditional finish makes sure only
    one of them records and settles it.
    """
    limits = deps.settings.time_limits
    left = limits.max_deadline_s + limits.finish_s - (time.monotonic() - claim.started)
    retrying = Retrying(
        retry=retry_if_exception(disconnects.is_disconnect),
        wait=wait_exponential_jitter(multiplier=0.2, max=5),
        stop=stop_after_delay(max(left, 0.0)),
        sleep=deps.sleep,
        reraise=True,
        before_sleep=lambda state: logger.warning(
            "database unreachable while finishing job_id=%s; retrying", claim.job_id
        ),
    )
    return retrying(_finish, claim, outcome, deps=deps)


def _finish(claim: Claim, outcome: dispatch.Outcome, *, deps: RunDeps) -> endings.Finished | None:
    """Record the outcome and settle the budget, all at once, only while the claim still holds (recording.record).

    Returns what the settlement set off (alerts, callbacks), or None if the claim was lost.
    """
    now = utcnow()
    completion = outcome.completion
    answered_by = outcome.model or deps.catalog.get_model(outcome.decision.model)
    values: dict[str, Any] = {
        "status": JobStatus.SUCCEEDED if completion is not None else JobStatus.FAILED,
        "finished_at": now,
        "updated_at": now,
        "difficulty_score": round(outcome.difficulty.score, 4),
        "difficulty_level": outcome.difficulty.level,
        "model_used": answered_by.name,
        "tier": answered_by.tier,
        "confidence": None if outcome.confidence is None else round(outcome.confidence, 4),
        "latency_ms": outcome.latency_ms,
        "retry_count": outcome.retry_count,
        "escalated": outcome.escalated,
        "escalation_reason": outcome.escalation_reason,
        "downgraded_from": outcome.downgraded_from,
        "prompt_tokens": sum(record.prompt_tokens for _, record in outcome.attempts),
        "completion_tokens": sum(record.completion_tokens for _, record in outcome.attempts),
        "cost": outcome.cost,
        "unconfirmed_cost": outcome.unconfirmed_cost,
    }
    # The ledger records what the upstream billed, whatever the bound said; a bill over it also flags the job
    # and holds its scopes' months, in the same write whichever form records it.
    request = claim.request
    overrun = call_bound.usage_over_bound(
        call_bound.call_bound(
            prompt=request.prompt, max_tokens=request.max_tokens, messages=request.messages, options=request.options
        ),
        (record for _, record in outcome.attempts),
        cost=outcome.cost,
        reserved=claim.reserved_cost,
    )
    values["usage_over_bound"] = overrun is not None
    # Calls whose usage could not be true are charged at their bounds (shared.upstream.llm_client); the job says so.
    invalid = outcome.usage_invalid
    values["usage_invalid"] = bool(invalid)
    hold_for = None if overrun is None else claim.job_id
    values["tokens_used"] = token_count.total_tokens(values["prompt_tokens"], values["completion_tokens"])
    if completion is not None:
        values.update(response=completion.text, finish_reason=completion.finish_reason, truncated=outcome.truncated)
    else:
        error = outcome.error
        values.update(
            error_code=error.code if error else "upstream_error",
            error_message=error.message if error else "the upstream call failed",
        )
        if isinstance(error, StreamInterrupted):
            values.update(response=error.partial.text)
    attempts = [
        {
            "job_id": claim.job_id,
            "seq": seq,
            "model": record.model,
            "tier": record.tier,
            "purpose": purpose,
            "outcome": record.outcome,
            "error_class": record.error_class,
            "status_code": record.status_code,
            "latency_ms": record.latency_ms,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cost": record.cost,
            "started_at": record.started_at,
            "deployment": record.deployment,
        }
        for seq, (purpose, record) in enumerate(outcome.attempts, start=1)
    ]
    finished = endings.Finished(
        status=values["status"],
        job_id=claim.job_id,
        model=values["model_used"],
        tier=values["tier"],
        error_code=values.get("error_code"),
        overrun=overrun,
        unconfirmed_cost=values["unconfirmed_cost"],
        usage_invalid=tuple(record.model for record in invalid),
    )
    if invalid:
        finished.alerts.append(
            alerts.UsageInvalid(
                claim.job_id, tuple(record.model for record in invalid), sum((r.cost for r in invalid), Decimal(0))
            )
        )
    if overrun is not None:
        finished.alerts.append(
            alerts.UsageOverBound.of(
                overrun, job_id=claim.job_id, scopes=budget.scopes_of(claim.api_key_id), period=claim.period
            )
        )
    rec = recording.Record(
        job_id=claim.job_id, run_count=claim.run_count, values=values, attempts=attempts,
        api_key_id=claim.api_key_id, period=claim.period, reserved=claim.reserved_cost, cost=outcome.cost,
        hold_for=hold_for, batch_id=claim.batch_id, thresholds=tuple(deps.settings.alert_thresholds),
    )  # fmt: skip
    ended = recording.record(deps.sessions, rec, finished)
    if ended is None:
        # Our lease lapsed and another run took the job over; it will record and settle it.
        logger.warning("lost the claim before finishing job_id=%s", claim.job_id)
        return None
    # After the commit, from the row the finishing write returned: what a read of the job would show.
    finished.body = _body_of(ended, attempts)
    return finished
