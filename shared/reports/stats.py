"""Request statistics, aggregated in the database from request_logs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import case
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.store.models import JobStatus
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.types import Money


@dataclass(frozen=True)
class ModelStats:
    requests: int
    cost: Decimal
    unconfirmed_cost: Decimal
    avg_latency_ms: float | None
    tokens: int


@dataclass(frozen=True)
class Stats:
    """Totals over every recorded request; rates are percentages of finished requests."""

    total_requests: int
    successful_requests: int
    failed_requests: int
    total_cost: Decimal
    # Part of total_cost charged at worst-case bounds for calls whose answer was lost (shared.ledger.lost_calls).
    unconfirmed_cost: Decimal
    avg_latency_ms: float | None
    total_tokens: int
    escalated_requests: int
    total_retries: int
    fallback_attempts: int
    by_model: dict[str, ModelStats]
    # Answered from the response cache, at no cost (shared.jobs.response_cache).
    cache_hits: int

    @property
    def finished_requests(self) -> int:
        return self.successful_requests + self.failed_requests

    @property
    def success_rate(self) -> float:
        return _percent(self.successful_requests, self.finished_requests)

    @property
    def escalation_rate(self) -> float:
        return _percent(self.escalated_requests, self.finished_requests)


def _percent(part: int, whole: int) -> float:
    return round(part * 100 / whole, 2) if whole else 0.0


def get_stats(session: Session, *, since: datetime | None = None, api_key_id: int | None = None) -> Stats:
    """Aggregate request_logs, optionally only since a moment and only one API key's requests."""
    where = [] if since is None else [RequestLog.created_at >= since]
    if api_key_id is not None:
        where.append(RequestLog.api_key_id == api_key_id)
    is_status = lambda status: func.sum(case((RequestLog.status == status, 1), else_=0))  # noqa: E731
    totals = session.execute(
        select(
            func.count(RequestLog.id),
            is_status(JobStatus.SUCCEEDED),
            is_status(JobStatus.FAILED),
            func.sum(RequestLog.cost, type_=Money()),
            func.avg(RequestLog.latency_ms),
            func.sum(RequestLog.tokens_used),
            func.sum(case((RequestLog.escalated, 1), else_=0)),
            func.sum(RequestLog.retry_count),
            func.sum(case((RequestLog.cached, 1), else_=0)),
            func.sum(RequestLog.unconfirmed_cost, type_=Money()),
        ).where(*where)
    ).one()
    fallbacks = session.scalar(
        select(func.count(RequestAttempt.id))
        .join(RequestLog, RequestLog.id == RequestAttempt.job_id)
        .where(RequestAttempt.purpose == "fallback", RequestAttempt.outcome != "skipped", *where)
    )
    rows = session.execute(
        select(
            RequestLog.model_used,
            func.count(RequestLog.id),
            func.sum(RequestLog.cost, type_=Money()),
            func.avg(RequestLog.latency_ms),
            func.sum(RequestLog.tokens_used),
            func.sum(RequestLog.unconfirmed_cost, type_=Money()),
        )
        .where(RequestLog.model_used.is_not(None), *where)
        .group_by(RequestLog.model_used)
        .order_by(RequestLog.model_used)
    ).all()
    return Stats(
        total_requests=totals[0],
        successful_requests=int(totals[1] or 0),
        failed_requests=int(totals[2] or 0),
        total_cost=totals[3] or Decimal(0),
        avg_latency_ms=_round(totals[4]),
        total_tokens=int(totals[5] or 0),
        escalated_requests=int(totals[6] or 0),
        total_retries=int(totals[7] or 0),
        fallback_attempts=int(fallbacks or 0),
        cache_hits=int(totals[8] or 0),
        unconfirmed_cost=totals[9] or Decimal(0),
        by_model={
            model: ModelStats(
                requests=count,
                cost=cost or Decimal(0),
                unconfirmed_cost=unconfirmed or Decimal(0),
                avg_latency_ms=_round(latency),
                tokens=int(tokens or 0),
            )
            for model, count, cost, latency, tokens, unconfirmed in rows
        },
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def get_typical_completion_tokens(session: Session, *, model: str, sample: int = 500) -> float | None:
    """Return the mean completion length of the model's recent successful answers, or None without any."""
    recent = (
        select(RequestAttempt.completion_tokens)
        .where(RequestAttempt.model == model, RequestAttempt.outcome == "ok")
        .order_by(RequestAttempt.id.desc())
        .limit(sample)
        .subquery()
    )
    value = session.execute(select(func.avg(recent.c.completion_tokens))).scalar()
    return None if value is None else float(value)
