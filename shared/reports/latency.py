"""Latency percentiles of recent finished jobs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.store.models import JobStatus
from shared.store.models import RequestLog

# Percentiles are taken over at most this many of the most recent finished jobs, so that the work per
# request stays bounded however long the log grows, and the same on SQLite (no percentile function) and
# PostgreSQL.
SAMPLE_SIZE = 2000


@dataclass(frozen=True)
class Percentiles:
    p50: float | None
    p95: float | None
    p99: float | None


def get_percentiles(
    session: Session, *, where: Sequence[ColumnElement[bool]], sample: int = SAMPLE_SIZE
) -> Percentiles:
    """Return p50/p95/p99 of latency_ms over the `sample` most recent finished jobs matching `where`."""
    latencies = session.scalars(
        select(RequestLog.latency_ms)
        .where(
            RequestLog.status.in_((JobStatus.SUCCEEDED, JobStatus.FAILED)),
            RequestLog.latency_ms.is_not(None),
            *where,
        )
        .order_by(RequestLog.created_at.desc(), RequestLog.id.desc())
        .limit(sample)
    ).all()
    ordered = sorted(float(value) for value in latencies)
    return Percentiles(
        p50=percentile(ordered, 0.50),
        p95=percentile(ordered, 0.95),
        p99=percentile(ordered, 0.99),
    )


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Return the `fraction` percentile of sorted values, interpolated linearly (PostgreSQL's percentile_cont)."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 3)
