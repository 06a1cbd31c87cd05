"""GET /api/reports/costs: the agreed shape, the default period, 400 for a bad one, and key scoping."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.ledger import api_keys
from shared.store.session import make_sessionmaker
from tests.support import request_logs


def _today_noon() -> datetime:
    return datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def _add(app: Flask, *rows: dict) -> None:
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        for row in rows:
            request_logs.add_job(session, **row)


def test_the_report_defaults_to_this_month_with_every_day(app: Flask, client: FlaskClient) -> None:
    _add(app, {"created_at": _today_noon(), "cost": Decimal("0.25")})
    body = client.get("/api/reports/costs").get_json()
    assert list(body) == [
        "period", "since", "until", "total_cost", "unconfirmed_cost", "baseline_cost", "savings", "savings_pct",
        "requests", "by_day", "by_model", "by_tier", "by_key",
    ]  # fmt: skip
    today = _today_noon().date()
    assert body["period"] == "month"
    assert body["since"] == today.replace(day=1).isoformat() + "T00:00:00+00:00"
    assert body["by_day"][0]["date"] == today.replace(day=1).isoformat()
    assert [day["date"] for day in body["by_day"] if day["requests"]] == [today.isoformat()]
    assert (body["total_cost"], body["requests"]) == (0.25, 1)
    assert body["savings"] == pytest.approx(body["baseline_cost"] - 0.25)
    assert body["by_key"] == [{"api_key_id": None, "name": None, "cost": 0.25, "requests": 1}]
    assert body["by_tier"] == [{"tier": "cheap", "cost": 0.25, "requests": 1}]


def test_the_week_is_the_last_seven_days(app: Flask, client: FlaskClient) -> None:
    _add(app, {"created_at": _today_noon() - timedelta(days=6)}, {"created_at": _today_noon() - timedelta(days=7)})
    body = client.get("/api/reports/costs?period=week").get_json()
    assert body["period"] == "week"
    assert [day["requests"] for day in body["by_day"]] == [1, 0, 0, 0, 0, 0, 0]
    assert body["by_day"][-1]["date"] == _today_noon().date().isoformat()


@pytest.mark.parametrize("period", ["year", "", "WEEK"])
def test_an_unknown_period_is_a_400(client: FlaskClient, period: str) -> None:
    response = client.get(f"/api/reports/costs?period={period}")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["details"]["field"]) == ("invalid_request", "period")


def test_a_key_sees_its_own_costs_and_an_admin_everyone_s(keyed_app: Flask) -> None:
    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        alice, alice_key = api_keys.create(session, name="alice")
        _, admin_key = api_keys.create(session, name="ops", is_admin=True)
        alice_id = alice.id
    _add(
        keyed_app,
        {"created_at": _today_noon(), "cost": Decimal("0.5"), "api_key_id": alice_id},
        {"created_at": _today_noon(), "cost": Decimal("2")},
    )
    client = keyed_app.test_client()
    mine = client.get("/api/reports/costs", headers={"Authorization": f"Bearer {alice_key}"}).get_json()
    everyone = client.get("/api/reports/costs", headers={"Authorization": f"Bearer {admin_key}"}).get_json()
    assert (mine["total_cost"], mine["by_key"]) == (0.5, [{"api_key_id": alice_id, "name": "alice", "cost": 0.5,
                                                            "requests": 1}])  # fmt: skip
    assert everyone["total_cost"] == 2.5
    assert [row["name"] for row in everyone["by_key"]] == [None, "alice"]
    assert client.get("/api/reports/costs").status_code == 401
