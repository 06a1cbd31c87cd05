"""POST /api/estimate: routing and cost range without calling or reserving anything."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func
from sqlalchemy import select

from shared.ledger import budget
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.support.prompts import HARD


def test_estimate_routes_like_a_worker_and_prices_the_range(client: FlaskClient, catalog) -> None:
    body = client.post("/api/estimate", json={"prompt": "What is the capital of France?", "max_tokens": 200})
    assert body.status_code == 200
    estimate = body.get_json()
    assert (estimate["tier"], estimate["model"], estimate["difficulty_level"]) == ("cheap", "gpt-3.5-turbo", "easy")
    assert estimate["escalation_tier"] == "mid"
    worst = budget.reservation_bound(
        catalog=catalog, tiers=catalog.tiers, prompt="What is the capital of France?", max_tokens=200, escalation=True
    )
    assert estimate["cost"]["worst_case"] == pytest.approx(float(worst))
    assert 0 < estimate["cost"]["expected"] < estimate["cost"]["worst_case"]
    assert estimate["completion_tokens_estimate"] == 50


def test_estimate_of_a_hard_prompt_goes_high(client: FlaskClient) -> None:
    estimate = client.post("/api/estimate", json={"prompt": HARD}).get_json()
    assert (estimate["tier"], estimate["difficulty_level"], estimate["escalation_tier"]) == ("high", "hard", None)


def test_forced_model_estimate_has_no_escalation(client: FlaskClient, catalog) -> None:
    estimate = client.post("/api/estimate", json={"prompt": "hi", "model": "gpt-4", "max_tokens": 10}).get_json()
    bound = budget.reservation_bound(catalog=catalog, tiers=("mid",), prompt="hi", max_tokens=10, escalation=False)
    assert (estimate["model"], estimate["escalation_tier"]) == ("gpt-4", None)
    assert estimate["cost"]["worst_case"] == pytest.approx(float(bound))


def test_estimate_calls_nothing_and_reserves_nothing(client: FlaskClient, app: Flask, enqueued: list[str]) -> None:
    client.post("/api/estimate", json={"prompt": "hi"})
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        assert session.scalar(select(func.count()).select_from(MonthlyBudget)) == 0
        assert session.scalar(select(func.count()).select_from(RequestLog)) == 0
    assert enqueued == []


def test_estimate_validates_like_prompt(client: FlaskClient) -> None:
    response = client.post("/api/estimate", json={"prompt": "hi", "tier": "ultra"})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "tier"


def test_unlimited_requests_log_no_rate_limit_errors(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert client.post("/api/estimate", json={"prompt": "hi"}).status_code == 200
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
