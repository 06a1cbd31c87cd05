"""Batches: many prompts accepted at once, reserved at once, run in parallel, finished together."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import and_
from sqlalchemy import delete
from sqlalchemy import exists
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.errors import NotFound
from shared.jobs import lifecycle
from shared.ledger import budget
from shared.routing.catalog import Catalog
from shared.store.models import Batch
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.types import utcnow

PENDING = (JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class BatchView:
    """A batch's counts and its jobs in submission order."""

    batch: Batch
    jobs: list[RequestLog]

    @property
    def succeeded(self) -> int:
        return sum(job.status is JobStatus.SUCCEEDED for job in self.jobs)

    @property
    def failed(self) -> int:
        return sum(job.status is JobStatus.FAILED for job in self.jobs)

    @property
    def pending(self) -> int:
        return sum(job.status in PENDING for job in self.jobs)

    @property
    def cost(self) -> Decimal:
        return sum((job.cost for job in self.jobs), Decimal(0))


def create(
    session: Session,
    *,
    requests: Sequence[lifecycle.JobRequest],
    catalog: Catalog,
    settings: Settings,
    requester: lifecycle.Requester | None = None,
    callback_url: str | None = None,
    batch_id: str | None = None,
) -> tuple[Batch, list[RequestLog]]:
    """Reserve the whole batch's bound in one step (or raise BudgetExceeded) and record its jobs as queued."""
    bounds = [lifecycle.bound_for(request, catalog=catalog, settings=settings) for request in requests]
    now = utcnow()
    period = budget.Period.of(now)
    lifecycle.reserve(
        session, amount=sum(bounds, Decimal(0)), period=period, settings=settings, requester=requester,
        count=len(requests),
    )  # fmt: skip
    batch = Batch(
        id=batch_id or uuid.uuid4().hex,
        created_at=now,
        total=len(requests),
        api_key_id=None if requester is None else requester.api_key_id,
        callback_url=callback_url,
    )
    session.add(batch)
    rows = [
        lifecycle.new_job(
            request,
            job_id=uuid.uuid4().hex,
            bound=bound,
            period=period,
            settings=settings,
            requester=requester,
            now=now,
            batch_id=batch.id,
            batch_index=index,
        )
        for index, (request, bound) in enumerate(zip(requests, bounds, strict=True))
    ]
    session.add_all(rows)
    session.flush()
    return batch, rows


def get_view(session: Session, *, batch_id: str) -> BatchView:
    """Return the batch and its jobs in submission order, or raise NotFound."""
    batch = session.get(Batch, batch_id, populate_existing=True) if lifecycle.could_be_stored_id(batch_id) else None
    if batch is None:
        raise NotFound(f"no batch {batch_id!r}")
    rows = list(
        session.scalars(
            select(RequestLog)
            .where(RequestLog.batch_id == batch_id)
            .order_by(RequestLog.batch_index)
            .execution_options(populate_existing=True)
        )
    )
    return BatchView(batch=batch, jobs=rows)


def cancel(session: Session, *, batch_id: str) -> list[str]:
    """Cancel the batch's jobs that have not started, releasing their reservations; return their ids."""
    return lifecycle.cancel_queued(session, batch_id=batch_id)


def complete_if_done(session: Session, *, batch_id: str) -> Batch | None:
    """Mark the batch complete if none of its jobs is pending; return it when this call completed it.

    Locks the batch row first, so that of two jobs finishing last at the same moment one sees the other's
    result: otherwise each could see the other still running and the batch would never complete.
    """
    locked = session.scalars(select(Batch).where(Batch.id == batch_id).with_for_update()).one_or_none()
    if locked is None or locked.completed_at is not None:
        return None
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.completed_at.is_(None),
            ~exists().where(and_(RequestLog.batch_id == batch_id, RequestLog.status.in_(PENDING))),
        )
        .values(completed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Batch, batch_id, populate_existing=True)


def withdraw(session: Session, *, batch_id: str) -> None:
    """Undo an accepted batch that could not be enqueued: release every reservation and forget it."""
    lifecycle.withdraw(session, batch_id=batch_id)
    # A job that left the queue meanwhile stays, and so does its batch.
    session.execute(delete(Batch).where(Batch.id == batch_id, ~exists().where(RequestLog.batch_id == batch_id)))
