"""Cost reports: UTC day buckets with zero days, breakdowns that add up, week and month windows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.ledger import api_keys
from shared.reports import costs
from shared.reports import savings
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from tests.support import request_logs

TODAY = date(2026, 2, 12)


def _at(day: int, hour: int = 12, **extra: int) -> datetime:
    return datetime(2026, 2, day, hour, tzinfo=UTC) + timedelta(**extra)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with sessionmaker(bind=engine)() as session:
        yield session


@pytest.mark.parametrize(
    ("period", "today", "first", "last"),
    [
        ("week", date(2026, 3, 3), date(2026, 2, 25), date(2026, 3, 3)),
        ("month", date(2026, 2, 12), date(2026, 2, 1), date(2026, 2, 28)),
        ("month", date(2028, 2, 29), date(2028, 2, 1), date(2028, 2, 29)),
        ("month", date(2026, 12, 31), date(2026, 12, 1), date(2026, 12, 31)),
    ],
)
def test_windows_are_whole_utc_days(period: costs.Period, today: date, first: date, last: date) -> None:
    window = costs.window_for(period, today=today)
    assert (window.days[0], window.days[-1]) == (first, last)
    assert len(window.days) == (last - first).days + 1
    assert window.since == datetime(first.year, first.month, first.day, tzinfo=UTC)
    assert window.until == datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)


def test_days_bucket_by_utc_midnight_and_list_days_without_jobs(session: Session, catalog: Catalog) -> None:
    request_logs.add_job(session, created_at=_at(9, 23, minutes=59, seconds=59, microseconds=999999))
    request_logs.add_job(session, created_at=_at(10, 0), cost=Decimal("0.5"))
    request_logs.add_job(session, created_at=_at(10, 3))
    request_logs.add_job(session, created_at=_at(12, 23), status=JobStatus.QUEUED)
    request_logs.add_job(session, created_at=_at(5, 23, minutes=59))  # before the week
    session.flush()
    report = costs.get(session, catalog=catalog, period="week", today=TODAY)
    assert [day.day for day in report.by_day] == [date(2026, 2, d) for d in range(6, 13)]
    assert [day.requests for day in report.by_day] == [0, 0, 0, 1, 2, 0, 1]
    assert report.by_day[4].cost == Decimal("0.5") + Decimal("0.000035")
    assert report.by_day[0].cost == Decimal(0) and report.by_day[0].baseline_cost == Decimal(0)
    assert report.requests == 4


def test_baseline_per_day_prices_finished_tokens_at_the_strongest_tier(session: Session, catalog: Catalog) -> None:
    request_logs.add_job(session, created_at=_at(11), prompt_tokens=120, completion_tokens=45)
    request_logs.add_job(session, created_at=_at(11), prompt_tokens=3, completion_tokens=7, status=JobStatus.FAILED)
    request_logs.add_job(session, created_at=_at(11), prompt_tokens=500, completion_tokens=500,
                         status=JobStatus.RUNNING)  # fmt: skip
    session.flush()
    report = costs.get(session, catalog=catalog, period="month", today=TODAY)
    expected = savings.price_at_baseline(catalog, prompt_tokens=123, completion_tokens=52)
    assert report.by_day[10].baseline_cost == expected
    assert report.totals.baseline_cost == expected
    assert report.totals.savings == expected - report.totals.cost


def test_breakdowns_add_up_to_the_totals(session: Session, catalog: Catalog) -> None:
    alice, _ = api_keys.create(session, name="alice")
    rows = [
        {"created_at": _at(1), "cost": Decimal("0.001"), "api_key_id": alice.id},
        {"created_at": _at(2), "cost": Decimal("0.25"), "model_used": "gpt-4", "tier": "mid"},
        {"created_at": _at(3), "cost": Decimal("0.125"), "model_used": "gpt-4-turbo", "tier": "high",
         "api_key_id": alice.id, "prompt_tokens": 70, "completion_tokens": 9},
        {"created_at": _at(4), "status": JobStatus.QUEUED, "api_key_id": alice.id},
    ]  # fmt: skip
    for row in rows:
        request_logs.add_job(session, **row)
    session.flush()
    report = costs.get(session, catalog=catalog, period="month", today=TODAY)
    total = Decimal("0.376")
    assert report.totals.cost == total
    for breakdown in (report.by_day, report.by_model, report.by_tier, report.by_key):
        assert sum((row.cost for row in breakdown), Decimal(0)) == total
        assert sum(row.requests for row in breakdown) == report.requests == 4
    assert {(row.api_key_id, row.name, row.requests) for row in report.by_key} == {
        (alice.id, "alice", 3),
        (None, None, 1),
    }
    assert {row.tier: row.cost for row in report.by_tier} == {
        "cheap": Decimal("0.001"), "mid": Decimal("0.25"), "high": Decimal("0.125"), None: Decimal(0),
    }  # fmt: skip
    turbo = next(row for row in report.by_model if row.model == "gpt-4-turbo")
    assert (turbo.prompt_tokens, turbo.completion_tokens) == (70, 9)
    assert sum(row.prompt_tokens for row in report.by_model) == 10 + 10 + 70


def test_a_key_report_holds_only_its_jobs(session: Session, catalog: Catalog) -> None:
    alice, _ = api_keys.create(session, name="alice")
    request_logs.add_job(session, created_at=_at(7), cost=Decimal("0.002"), api_key_id=alice.id)
    request_logs.add_job(session, created_at=_at(7), cost=Decimal("0.9"))
    session.flush()
    report = costs.get(session, catalog=catalog, period="week", today=TODAY, api_key_id=alice.id)
    assert (report.totals.cost, report.requests) == (Decimal("0.002"), 1)
    assert [(row.api_key_id, row.cost) for row in report.by_key] == [(alice.id, Decimal("0.002"))]


def test_month_and_week_windows_count_different_jobs(session: Session, catalog: Catalog) -> None:
    request_logs.add_job(session, created_at=_at(1))
    request_logs.add_job(session, created_at=_at(12))
    request_logs.add_job(session, created_at=datetime(2026, 1, 31, 23, tzinfo=UTC))
    session.flush()
    month = costs.get(session, catalog=catalog, period="month", today=TODAY)
    week = costs.get(session, catalog=catalog, period="week", today=TODAY)
    assert (month.requests, len(month.by_day)) == (2, 28)
    assert (week.requests, len(week.by_day)) == (1, 7)
