"""What a job's end sets off, in the transaction that ends it: its callback, and its batch's completion.

Every way a job ends (finished by its run, cancelled, failed by the reaper, answered from the cache) goes
through `after_terminal` or `follow_up`, so a batch completes exactly when its last job ends, whichever way.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from typing import Any

from sqlalchemy import and_
from sqlalchemy import exists
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.jobs import states
from shared.ledger import alerts
from shared.ledger import call_bound
from shared.store.models import Batch
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.types import utcnow


@dataclass
class Finished:
    """A job that reached a terminal state, and what that set off once committed."""

    status: JobStatus
    job_id: str
    alerts: list[alerts.Announcement] = field(default_factory=list)
    callbacks: list[tuple[str, str]] = field(default_factory=list)
    # Who answered and why it failed, for the job's metrics and log line (none for a cancelled job).
    model: str | None = None
    tier: str | None = None
    error_code: str | None = None
    # The job as the API shows it, when the code that ended it had the row at hand.
    body: dict[str, Any] | None = None
    # How the upstream's bill passed the job's bound, when it did (shared.ledger.call_bound.usage_over_bound).
    overrun: call_bound.Overrun | None = None
    # The part of its cost charged at their bound for calls lost with their workers (shared.ledger.lost_calls).
    unconfirmed_cost: Decimal = Decimal(0)
    # The models of the attempts whose reported usage could not be true (charged at their bounds instead).
    usage_invalid: tuple[str, ...] = ()


def after_terminal(session: Session, *, job_id: str, finished: Finished) -> None:
    """In the transaction that ended a job: note its callback and complete its batch if it was the last."""
    job = session.get(RequestLog, job_id, populate_existing=True)
    assert job is not None
    finished.model, finished.tier, finished.error_code = job.model_used, job.tier, job.error_code
    follow_up(session, job_id=job_id, callback_url=job.callback_url, batch_id=job.batch_id, finished=finished)


def follow_up(
    session: Session, *, job_id: str, callback_url: str | None, batch_id: str | None, finished: Finished
) -> None:
    """after_terminal for a caller that already knows the job's callback URL and batch."""
    note_callback(finished, job_id=job_id, callback_url=callback_url)
    if batch_id is not None:
        completed = complete_if_done(session, batch_id=batch_id)
        if completed is not None and completed.callback_url:
            finished.callbacks.append(("batch", completed.id))


def note_callback(finished: Finished, *, job_id: str, callback_url: str | None) -> None:
    """Note that the job's callback is due, if it has one (sent after the commit)."""
    if callback_url:
        finished.callbacks.append(("job", job_id))


def complete_if_done(session: Session, *, batch_id: str) -> Batch | None:
    """Mark the batch complete if none of its jobs is pending; return it when this call completed it.

    Locks the batch row first, so that of two jobs finishing last at the same moment one sees the other's
    result: otherwise each could see the other still running and the batch would never complete. (That is
    also why no single statement can complete a batch: it would judge the other jobs on its own snapshot.)
    """
    locked = session.scalars(select(Batch).where(Batch.id == batch_id).with_for_update()).one_or_none()
    if locked is None or locked.completed_at is not None:
        return None
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.completed_at.is_(None),
            ~exists().where(and_(RequestLog.batch_id == batch_id, RequestLog.status.in_(states.PENDING))),
        )
        .values(completed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Batch, batch_id, populate_existing=True)
