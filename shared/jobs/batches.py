"""Batches: many prompts accepted at once, reserved at once, run in parallel, finished together."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import delete
from sqlalchemy import exists
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.errors import NotFound
from shared.jobs import lifecycle
from shared.jobs import views
from shared.ledger import budget
from shared.routing.catalog import Catalog
from shared.store.models import Batch
from shared.store.models import RequestLog
from shared.store.types import utcnow


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
    period = budget.Period.of(now, windowed=lifecycle.windowed_scopes(settings, requester))
    lifecycle.reserve(
        session, amount=sum(bounds, Decimal(0)), period=period, settings=settings, requester=requester, now=now,
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


def get_view(session: Session, *, batch_id: str) -> views.BatchView:
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
    return views.BatchView(batch=batch, jobs=rows)


def cancel(session: Session, *, batch_id: str) -> list[str]:
    """Cancel the batch's jobs that have not started, releasing their reservations; return their ids."""
    return lifecycle.cancel_queued(session, batch_id=batch_id)


def withdraw(session: Session, *, batch_id: str) -> None:
    """Undo an accepted batch that could not be enqueued: release every reservation and forget it."""
    lifecycle.withdraw(session, batch_id=batch_id)
    # A job that left the queue meanwhile stays, and so does its batch.
    session.execute(delete(Batch).where(Batch.id == batch_id, ~exists().where(RequestLog.batch_id == batch_id)))
