"""POST /api/prompt and GET /api/jobs: validation, budget, queueing, and the contract's error bodies."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from kombu.exceptions import OperationalError
from sqlalchemy import select

from shared.store import completion_channel
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import run_jobs_soon
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from worker import tasks


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_json()
    assert response.is_json
    body = response.get_json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def _rows(app: Flask, model: type) -> list:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return list(session.scalars(select(model)))


def test_wait_false_answers_202_with_a_poll_url_and_enqueues(client: FlaskClient, enqueued: list[str]) -> None:
    response = client.post("/api/prompt", json={"prompt": "Hello there", "wait": False})
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["poll_url"] == f"/api/jobs/{body['job_id']}"
    assert response.headers["Location"] == body["poll_url"]
    assert enqueued == [body["job_id"]]


def test_a_queued_job_can_be_polled(client: FlaskClient, enqueued: list[str]) -> None:
    job_id = client.post("/api/prompt", json={"prompt": "Hi", "wait": False, "metadata": {"k": 1}}).get_json()["job_id"]
    body = client.get(f"/api/jobs/{job_id}").get_json()
    assert (body["job_id"], body["status"], body["metadata"]) == (job_id, "queued", {"k": 1})
    assert "created_at" in body


def test_unknown_job_is_404(client: FlaskClient) -> None:
    _error(client.get("/api/jobs/nope"), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": " \n\t "}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 4097}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "100"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10.5}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "timeout_s": 0}, "timeout_s"),
        ({"prompt": "x", "timeout_s": 120.5}, "timeout_s"),
        ({"prompt": "x", "timeout_s": "5"}, "timeout_s"),
        ({"prompt": "x", "wait": "yes"}, "wait"),
        ({"prompt": "x", "preference": "cheapest"}, "preference"),
        ({"prompt": "x", "model": "gpt-9"}, "model"),
        ({"prompt": "x", "tier": "ultra"}, "tier"),
        ({"prompt": "x", "model": "gpt-4", "tier": "cheap"}, "tier"),
        ({"prompt": "x", "metadata": []}, "metadata"),
        ({"prompt": "x", "metadata": {"blob": "y" * 5000}}, "metadata"),
        ({"prompt": "x", "colour": "blue"}, "colour"),
        ({"prompt": "x" * 32001}, "prompt"),
    ],
)
def test_bad_bodies_answer_400_naming_the_field(client: FlaskClient, enqueued: list[str], body, field) -> None:
    error = _error(client.post("/api/prompt", json=body), 400, "invalid_request")
    assert error["details"]["field"] == field
    assert enqueued == []


def test_bad_input_reserves_nothing(client: FlaskClient, app: Flask, enqueued: list[str]) -> None:
    client.post("/api/prompt", json={"prompt": "x", "model": "gpt-9"})
    assert _rows(app, MonthlyBudget) == []
    assert _rows(app, RequestLog) == []


def test_malformed_json_is_400(client: FlaskClient, enqueued: list[str]) -> None:
    response = client.post("/api/prompt", data='{"prompt": ', content_type="application/json")
    assert _error(response, 400, "invalid_request")["details"]["field"] == "body"


def test_a_json_array_body_is_400(client: FlaskClient, enqueued: list[str]) -> None:
    _error(client.post("/api/prompt", json=["x"]), 400, "invalid_request")


def test_wrong_content_type_is_415(client: FlaskClient, enqueued: list[str]) -> None:
    _error(client.post("/api/prompt", data="prompt=x", content_type="text/plain"), 415, "unsupported_media_type")
    _error(client.post("/api/prompt", data='{"prompt": "x"}'), 415, "unsupported_media_type")


def test_oversized_body_is_413(client: FlaskClient, app: Flask, enqueued: list[str]) -> None:
    body = b'{"prompt": "' + b"x" * app.extensions["settings"].max_request_bytes + b'"}'
    _error(client.post("/api/prompt", data=body, content_type="application/json"), 413, "payload_too_large")
    assert enqueued == []


def test_wrong_method_is_405_json(client: FlaskClient) -> None:
    response = client.get("/api/prompt")
    _error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_unknown_route_is_404_json(client: FlaskClient) -> None:
    _error(client.get("/api/nothing-here"), 404, "not_found")


def test_budget_exhausted_is_402_and_enqueues_nothing(client: FlaskClient, app: Flask, enqueued: list[str]) -> None:
    app.extensions["settings"] = app.extensions["settings"].model_copy(update={"monthly_budget_limit": Decimal("0.01")})
    error = _error(client.post("/api/prompt", json={"prompt": "x", "wait": False}), 402, "budget_exceeded")
    assert error["details"]["remaining"] == pytest.approx(0.01)
    assert enqueued == []
    assert _rows(app, RequestLog) == []


def test_broker_down_is_503_and_releases_the_reservation(
    client: FlaskClient, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_, **__):
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks.run_job, "apply_async", refuse)
    _error(client.post("/api/prompt", json={"prompt": "x", "wait": False}), 503, "unavailable")
    ledger = _rows(app, MonthlyBudget)[0]
    assert (ledger.reserved, ledger.request_count) == (Decimal(0), 0)
    assert _rows(app, RequestLog) == []


def test_database_down_is_503() -> None:
    from tests.conftest import make_test_settings
    from web.app import create_app

    unreachable = make_test_settings("postgresql://nobody@127.0.0.1:1/none")
    client = create_app(unreachable).test_client()
    _error(client.post("/api/prompt", json={"prompt": "x", "wait": False}), 503, "unavailable")


def test_wait_true_answers_200_with_the_result(
    client: FlaskClient, app: Flask, catalog, monkeypatch: pytest.MonkeyPatch, publisher: redis.Redis
) -> None:
    deps = worker_deps(
        app,
        catalog,
        FakeLLMClient(),
        on_finished=lambda job_id: completion_channel.publish_job_done(publisher, job_id),
    )
    workers, _ = run_jobs_soon(monkeypatch, deps)
    response = client.post("/api/prompt", json={"prompt": "What is the capital of France?", "timeout_s": 10})
    assert response.status_code == 200
    body = response.get_json()
    expected_keys = {
        "job_id", "status", "success", "response", "model_used", "tier", "difficulty_score", "difficulty_level",
        "tokens_used", "prompt_tokens", "completion_tokens", "cost", "latency_ms", "escalated", "retry_count",
        "attempts", "metadata",
    }  # fmt: skip
    assert expected_keys <= body.keys()
    assert (body["status"], body["success"], body["model_used"]) == ("succeeded", True, "gpt-3.5-turbo")
    assert body["attempts"][0]["outcome"] == "ok"
    for worker in workers:
        worker.join()


def test_wait_true_answers_the_announced_body_as_a_read_of_the_job_shows_it(
    client: FlaskClient, app: Flask, catalog, monkeypatch: pytest.MonkeyPatch, publisher: redis.Redis
) -> None:
    deps = worker_deps(
        app,
        catalog,
        FakeLLMClient(),
        on_answered=lambda job_id, body: completion_channel.publish_job_done(publisher, job_id, body),
    )
    workers, _ = run_jobs_soon(monkeypatch, deps)
    response = client.post("/api/prompt", json={"prompt": "What is 2 + 2?", "metadata": {"run": 7}, "timeout_s": 10})
    for worker in workers:
        worker.join()
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "succeeded"
    assert body == client.get(f"/api/jobs/{body['job_id']}").get_json()


def test_wait_true_times_out_into_202(client: FlaskClient, enqueued: list[str]) -> None:
    response = client.post("/api/prompt", json={"prompt": "Hi", "timeout_s": 0.2})
    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"


def test_an_unknown_estimator_is_400(client: FlaskClient, enqueued: list[str]) -> None:
    response = client.post("/api/prompt", json={"prompt": "x", "difficulty_estimator": "oracle"})
    assert _error(response, 400, "invalid_request")["details"]["field"] == "difficulty_estimator"


@pytest.mark.parametrize(("asked", "stored"), [({}, "wait"), ({"on_rate_limit": "fallback"}, "fallback")])
def test_the_rate_limit_choice_is_stored_with_the_job(
    client: FlaskClient, app: Flask, enqueued: list[str], asked: dict[str, str], stored: str
) -> None:
    body = client.post("/api/prompt", json={"prompt": "Name a colour.", "wait": False, **asked}).get_json()
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        assert session.get(RequestLog, body["job_id"]).on_rate_limit == stored


def test_an_unknown_rate_limit_choice_answers_400(client: FlaskClient, enqueued: list[str]) -> None:
    response = client.post("/api/prompt", json={"prompt": "Name a colour.", "on_rate_limit": "retry"})
    assert response.status_code == 400 and enqueued == []
    assert "on_rate_limit" in response.get_data(as_text=True)
