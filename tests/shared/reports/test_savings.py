"""Baseline cost and savings: finished jobs' tokens priced exactly at the strongest tier's model."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.reports import latency
from shared.reports import savings
from shared.reports import stats
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from tests.support import request_logs

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with sessionmaker(bind=engine)() as session:
        yield session


def _jobs(session: Session) -> list:
    rows = [
        {"created_at": T0, "prompt_tokens": 1234, "completion_tokens": 567, "cost": Decimal("0.0014675")},
        {"created_at": T0, "prompt_tokens": 7, "completion_tokens": 3, "model_used": "gpt-4", "tier": "mid",
         "cost": Decimal("0.00039")},
        {"created_at": T0 + timedelta(days=1), "status": JobStatus.FAILED, "prompt_tokens": 11, "completion_tokens": 0,
         "cost": Decimal("0.0000055"), "error_code": "upstream_cut"},
        {"created_at": T0, "status": JobStatus.RUNNING, "prompt_tokens": 999, "completion_tokens": 999},
    ]  # fmt: skip
    jobs = [request_logs.add_job(session, **row) for row in rows]
    session.flush()
    return jobs


def test_baseline_prices_finished_tokens_at_the_strongest_tier_exactly(session: Session, catalog: Catalog) -> None:
    jobs = _jobs(session)
    strongest = next(model for model in catalog.models if model.tier == catalog.tiers[-1])
    expected = sum(
        (
            Decimal(job.prompt_tokens) * strongest.input_per_1k / 1000
            + Decimal(job.completion_tokens) * strongest.output_per_1k / 1000
            for job in jobs
            if job.status.is_terminal
        ),
        Decimal(0),
    )
    baseline = savings.get_baseline_cost(session, catalog=catalog, where=[])
    assert baseline == expected
    assert isinstance(baseline, Decimal)


def test_savings_are_the_baseline_less_the_real_cost(session: Session, catalog: Catalog) -> None:
    jobs = _jobs(session)
    cost = sum((job.cost for job in jobs), Decimal(0))
    saved = savings.Savings(cost=cost, baseline_cost=savings.get_baseline_cost(session, catalog=catalog, where=[]))
    assert saved.savings == saved.baseline_cost - cost
    assert saved.savings_pct == pytest.approx(float(saved.savings / saved.baseline_cost * 100), abs=0.01)


def test_the_baseline_follows_the_scope(session: Session, catalog: Catalog) -> None:
    _jobs(session)
    since_second_day = savings.scope(since=T0 + timedelta(hours=12))
    expected = savings.price_at_baseline(catalog, prompt_tokens=11, completion_tokens=0)
    assert savings.get_baseline_cost(session, catalog=catalog, where=since_second_day) == expected


def test_no_baseline_means_no_savings_percentage() -> None:
    assert savings.Savings(cost=Decimal(0), baseline_cost=Decimal(0)).savings_pct == 0.0


def test_stats_count_cache_hits(session: Session) -> None:
    for cached in (True, True, False):
        request_logs.add_job(session, created_at=T0, cached=cached)
    session.flush()
    assert stats.get_stats(session).cache_hits == 2


def test_latency_percentiles_interpolate_over_finished_jobs(session: Session) -> None:
    for n in range(1, 101):
        request_logs.add_job(session, created_at=T0 + timedelta(seconds=n), latency_ms=float(n))
    request_logs.add_job(session, created_at=T0, status=JobStatus.QUEUED)
    session.flush()
    result = latency.get_percentiles(session, where=[])
    assert (result.p50, result.p95, result.p99) == (50.5, 95.05, 99.01)


def test_latency_percentiles_use_only_the_most_recent_sample(session: Session) -> None:
    for n in range(10):
        request_logs.add_job(session, created_at=T0 + timedelta(seconds=n), latency_ms=1000.0 if n < 5 else 1.0)
    session.flush()
    assert latency.get_percentiles(session, where=[], sample=5).p99 == 1.0


def test_latency_percentiles_are_null_without_finished_jobs(session: Session) -> None:
    assert latency.get_percentiles(session, where=[]) == latency.Percentiles(p50=None, p95=None, p99=None)
