"""Nothing stays stuck: find jobs whose worker died or whose queue message was lost, and deal with them.

- A running job whose lease lapsed lost its worker: it is re-enqueued (the next run claims it), or, after
  JOB_MAX_RUNS runs, failed with `worker_lost`.
- A running job whose worker is known dead (`alive` says so: in the worker, its heartbeat key is gone and it
  answers no ping, worker.presence) is dealt with the same way without waiting out its lease: its lease is
  ended first (states.ABANDON). Only a claim older than a key's lifetime is judged, so that a worker had time
  to write its key; a worker that cannot be asked about (Redis down) is never taken for dead, and its jobs
  wait for their lease.
- A queued job not picked up within a lease may have lost its message (or the web process died before
  enqueueing). Where the broker can be asked (`messages`), only a job whose message is gone is: one still
  waiting in its queue, or delivered to a worker, is part of a backlog being drained and is left alone,
  neither re-sent nor expired, however long it waits. A job whose message is gone is re-enqueued, or, once
  older than JOB_MAX_AGE_S, failed with `expired`.
- A running job whose message waits in a queue again (redelivered) is not re-sent a second time.
A failed job's reservation is settled, in the month it was reserved in, at what its lost runs' calls may
have cost: each call a run noted before starting it is charged at its bound and marked unconfirmed
(shared.ledger.lost_calls). A month that ends with reservations open closes them correctly.
Re-enqueueing a job twice is harmless: only one run can claim it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.jobs import endings
from shared.jobs import states
from shared.ledger import lost_calls
from shared.observability import job_events
from shared.observability import metrics
from shared.store import heartbeats
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.types import utcnow

logger = logging.getLogger(__name__)

BATCH = 500


@dataclass(frozen=True)
class Messages:
    """The jobs whose message is in the broker: waiting in a queue, or delivered to a worker and unacknowledged."""

    waiting: frozenset[str] = frozenset()
    delivered: frozenset[str] = frozenset()


@dataclass
class Sweep:
    """What one pass of the reaper did: jobs to re-enqueue (id, is a batch item) and jobs it failed."""

    requeued: list[tuple[str, bool]] = field(default_factory=list)
    failed: list[endings.Finished] = field(default_factory=list)


def sweep(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    now: datetime | None = None,
    messages: Callable[[], Messages] | None = None,
    alive: Callable[[set[str]], set[str] | None] | None = None,
) -> Sweep:
    """Fail what is beyond saving and return the ids to re-enqueue; each decision is its own transaction.

    `messages` reads which jobs the broker still holds a message for (asked once, only if a job looks stuck);
    None: every stale job's message is taken as lost. `alive` tells which of the named workers are alive, or
    None when it cannot tell; None: running jobs wait for their lease.
    """
    now = now or utcnow()
    result = Sweep()
    lease = timedelta(seconds=settings.job_lease_s)
    if alive is not None:
        grace = timedelta(seconds=heartbeats.key_lifetime_s(settings.worker_heartbeat_s))
        _abandon_dead_workers_jobs(sessions, alive=alive, now=now, claimed_before=now - grace)
    with sessions() as session:
        stale = session.execute(
            select(RequestLog.id, RequestLog.status, RequestLog.run_count, RequestLog.created_at, RequestLog.batch_id)
            .where(states.REAP.allows(now=now, lease=lease))
            .order_by(RequestLog.created_at)
            .limit(BATCH)
        ).all()
    held = messages() if messages is not None and stale else Messages()
    draining = {job_id for job_id, status, *_ in stale if status is JobStatus.QUEUED and _in_broker(job_id, held)}
    if draining:
        # Seen in the broker: looked at again a lease from now, so that the sweep's window moves past them.
        _mark_seen(sessions, job_ids=draining, now=now, lease=lease)
    for job_id, status, run_count, created_at, batch_id in stale:
        if job_id in draining or (status is JobStatus.RUNNING and job_id in held.waiting):
            continue
        if status is JobStatus.RUNNING and run_count >= settings.job_max_runs:
            reason = ("worker_lost", f"the job's worker stopped answering {run_count} times")
        elif created_at < now - timedelta(seconds=settings.job_max_age_s):
            reason = ("expired", "the job waited longer than JOB_MAX_AGE_S without finishing")
        else:
            if _mark_requeued(sessions, job_id=job_id, now=now, lease=lease):
                result.requeued.append((job_id, batch_id is not None))
            continue
        finished = fail(sessions, job_id=job_id, code=reason[0], message=reason[1], now=now, lease=lease)
        if finished is not None:
            job_events.finished(finished)
            result.failed.append(finished)
    metrics.record_requeued(len(result.requeued))
    if result.requeued or result.failed:
        logger.warning("reaper requeued=%d failed=%d", len(result.requeued), len(result.failed))
    return result


def _abandon_dead_workers_jobs(
    sessions: sessionmaker[Session],
    *,
    alive: Callable[[set[str]], set[str] | None],
    now: datetime,
    claimed_before: datetime,
) -> None:
    """End the lease of each running job claimed before `claimed_before` by a worker that is not alive."""
    with sessions() as session:
        claims = session.execute(
            select(RequestLog.id, RequestLog.worker, RequestLog.run_count).where(
                RequestLog.status == JobStatus.RUNNING,
                RequestLog.worker.is_not(None),
                RequestLog.started_at < claimed_before,
                RequestLog.lease_expires_at >= now,
            )
        ).all()
    if not claims:
        return
    living = alive({worker for _, worker, _ in claims})
    if living is None:
        return
    for job_id, worker, run_count in claims:
        if worker in living:
            continue
        # Re-checked in the writing transaction: the job may have been finished, or claimed anew, meanwhile.
        with sessions.begin() as session:
            ended = session.execute(
                update(RequestLog)
                .where(
                    RequestLog.id == job_id,
                    states.ABANDON.allows(worker=worker, run_count=run_count, claimed_before=claimed_before, now=now),
                )
                .values(lease_expires_at=RequestLog.started_at, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        if ended.rowcount == 1:  # type: ignore[attr-defined]
            logger.warning("worker %s is gone; its job is taken over job_id=%s", worker, job_id)


def _in_broker(job_id: str, held: Messages) -> bool:
    return job_id in held.waiting or job_id in held.delivered


def _mark_seen(sessions: sessionmaker[Session], *, job_ids: set[str], now: datetime, lease: timedelta) -> None:
    with sessions.begin() as session:
        session.execute(
            update(RequestLog)
            .where(
                RequestLog.id.in_(job_ids),
                RequestLog.status == JobStatus.QUEUED,
                states.RESEND.allows(now=now, lease=lease),
            )
            .values(enqueued_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )


def _mark_requeued(sessions: sessionmaker[Session], *, job_id: str, now: datetime, lease: timedelta) -> bool:
    # Stale still, re-checked inside the writing transaction: a worker may have claimed or finished it meanwhile.
    with sessions.begin() as session:
        result = session.execute(
            update(RequestLog)
            .where(RequestLog.id == job_id, states.RESEND.allows(now=now, lease=lease))
            .values(enqueued_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1  # type: ignore[attr-defined]


def fail(
    sessions: sessionmaker[Session], *, job_id: str, code: str, message: str, now: datetime, lease: timedelta
) -> endings.Finished | None:
    """Finish a stale job as failed and settle its reservation, once; None if it moved on meanwhile.

    Its cost is what its lost runs' calls may have cost, at their bounds (shared.ledger.lost_calls).
    """
    where = states.REAP.allows(now=now, lease=lease)
    return lost_calls.fail(sessions, job_id=job_id, where=where, code=code, message=message, now=now)
