"""GET /api/budget, /api/stats and /api/health against recorded jobs."""

from __future__ import annotations

from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.errors import PermanentLLMError
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok


@pytest.fixture
def recorded(app: Flask, catalog) -> list[RequestLog]:
    """Three finished jobs (one escalated, one failed) and one still queued."""
    sessions = make_sessionmaker(app.extensions["db_engine"])
    settings = app.extensions["settings"]
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", ok(), ok("I don't know."), PermanentLLMError("no", status_code=400))
    # The escalation of the second job answers; the fallback of the third fails too.
    fake.script("gpt-4", ok(), PermanentLLMError("no", status_code=400))
    deps = worker_deps(app, catalog, fake, sleep=lambda _: None)
    ids = []
    for _ in range(4):
        with sessions.begin() as session:
            ids.append(lifecycle.create(session, request=lifecycle.JobRequest(prompt="Hi there"), catalog=catalog,
                                   settings=settings).id)  # fmt: skip
    for job_id in ids[:3]:
        runs.run(job_id, deps=deps)
    with sessions() as session:
        return list(session.scalars(select(RequestLog)))


def test_budget_adds_up_to_the_rows(client: FlaskClient, recorded: list[RequestLog]) -> None:
    body = client.get("/api/budget").get_json()
    spent = sum((job.cost for job in recorded), Decimal(0))
    reserved = sum((job.reserved_cost for job in recorded if not job.status.is_terminal), Decimal(0))
    assert body["total_spent"] == pytest.approx(float(spent))
    assert body["reserved"] == pytest.approx(float(reserved))
    assert body["request_count"] == 4
    assert body["monthly_limit"] == 100.0
    assert body["remaining"] == pytest.approx(100 - float(spent) - float(reserved))
    assert body["percentage_used"] == pytest.approx(float(spent), abs=1e-4)
    assert {"year", "month"} <= body.keys()


def test_stats_add_up_to_the_rows(client: FlaskClient, recorded: list[RequestLog]) -> None:
    body = client.get("/api/stats").get_json()
    finished = [job for job in recorded if job.status.is_terminal]
    assert (body["total_requests"], body["successful_requests"], body["failed_requests"]) == (4, 2, 1)
    assert body["success_rate"] == pytest.approx(200 / 3, abs=0.01)
    assert body["escalation_rate"] == pytest.approx(100 / 3, abs=0.01)
    assert body["total_cost"] == pytest.approx(float(sum((job.cost for job in recorded), Decimal(0))))
    assert body["total_tokens"] == sum(job.tokens_used for job in recorded)
    assert body["avg_latency_ms"] == pytest.approx(sum(job.latency_ms for job in finished) / 3, abs=1e-3)
    by_model = body["by_model"]
    assert sum(row["requests"] for row in by_model.values()) == 3
    assert by_model["gpt-4"]["requests"] == 1


def test_stats_since_the_future_are_empty(client: FlaskClient, recorded: list[RequestLog]) -> None:
    body = client.get("/api/stats?since=2999-01-01").get_json()
    assert (body["total_requests"], body["by_model"], body["success_rate"]) == (0, {}, 0.0)


def test_stats_with_a_bad_since_is_400(client: FlaskClient) -> None:
    response = client.get("/api/stats?since=yesterday")
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "since"


def test_health_is_ok_with_database_and_broker(client: FlaskClient) -> None:
    response = client.get("/api/health")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "ok"
    assert (body["checks"]["database"], body["checks"]["broker"]) == ("ok", "ok")
    assert isinstance(body["checks"]["workers"], int)


def test_health_names_an_unreachable_broker(tmp_path) -> None:
    from web.app import create_app

    app = create_app(make_test_settings(f"sqlite:///{tmp_path}/h.db", redis_url="redis://127.0.0.1:1/0"))
    response = app.test_client().get("/api/health")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "ok", "broker": "unreachable", "workers": 0}


def test_health_names_an_unreachable_database() -> None:
    from web.app import create_app

    app = create_app(make_test_settings("postgresql://nobody@127.0.0.1:1/none"))
    response = app.test_client().get("/api/health")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "unreachable"
