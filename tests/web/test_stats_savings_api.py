"""GET /api/stats: baseline cost, savings, cache hits and latency percentiles."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.reports import savings
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from shared.store.session import make_sessionmaker
from tests.support import request_logs

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def recorded(app: Flask) -> None:
    rows = [
        {"created_at": T0, "prompt_tokens": 100, "completion_tokens": 50, "cost": Decimal("0.000125"),
         "latency_ms": 10.0},
        {"created_at": T0, "prompt_tokens": 40, "completion_tokens": 10, "cost": Decimal(0), "cached": True,
         "latency_ms": 20.0},
        {"created_at": T0 + timedelta(days=2), "prompt_tokens": 300, "completion_tokens": 200,
         "model_used": "gpt-4", "tier": "mid", "cost": Decimal("0.021"), "latency_ms": 40.0},
        {"created_at": T0, "status": JobStatus.QUEUED},
    ]  # fmt: skip
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        for row in rows:
            request_logs.add_job(session, **row)


def test_stats_carry_baseline_savings_cache_hits_and_latency(
    client: FlaskClient, recorded: None, catalog: Catalog
) -> None:
    body = client.get("/api/stats").get_json()
    baseline = savings.price_at_baseline(catalog, prompt_tokens=440, completion_tokens=260)
    cost = Decimal("0.000125") + Decimal("0.021")
    assert body["baseline_cost"] == float(baseline)
    assert body["total_cost"] == float(cost)
    assert body["savings"] == float(baseline - cost)
    assert body["savings_pct"] == round(float((baseline - cost) * 100 / baseline), 2)
    assert body["cache_hits"] == 1
    assert body["latency_ms"] == {"p50": 20.0, "p95": 38.0, "p99": 39.6}


def test_stats_since_narrow_the_savings_too(client: FlaskClient, recorded: None, catalog: Catalog) -> None:
    body = client.get("/api/stats?since=2026-05-05").get_json()
    baseline = savings.price_at_baseline(catalog, prompt_tokens=300, completion_tokens=200)
    assert body["baseline_cost"] == float(baseline)
    assert body["savings"] == float(baseline - Decimal("0.021"))
    assert (body["cache_hits"], body["latency_ms"]["p50"]) == (0, 40.0)
