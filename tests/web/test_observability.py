"""Request ids, per-request log lines without prompts or keys, and who may read /metrics."""

from __future__ import annotations

import io
import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from shared.ledger import api_keys
from shared.store.base import Base
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from web import request_ids

SECRET_PROMPT = "My account number is 4242-SECRET, what is my balance?"


def _parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _make_app(database_url: str, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> Flask:
    from web.app import create_app

    app = create_app(make_test_settings(database_url, **overrides))
    Base.metadata.create_all(app.extensions["db_engine"])
    from worker import tasks

    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: None)
    return app


def _key(app: Flask, **options: object) -> str:
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        return api_keys.create(session, name="obs", **options)[1]


@pytest.mark.parametrize("supplied", ["abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "svc:trace.42_x"])
def test_a_valid_request_id_is_kept(supplied: str) -> None:
    assert request_ids.choose(supplied) == supplied


@pytest.mark.parametrize("supplied", [None, "", "has space", "x" * 65, "-leading-dash", 'quote"d', "new\nline"])
def test_a_missing_or_invalid_request_id_is_replaced_by_a_new_one(supplied: str | None) -> None:
    chosen = request_ids.choose(supplied)
    assert chosen != supplied and request_ids.VALID.fullmatch(chosen)


def test_the_request_id_comes_back_and_is_stored_on_the_job(app: Flask, client: FlaskClient, enqueued) -> None:
    response = client.post("/api/prompt", json={"prompt": "Hi", "wait": False}, headers={"X-Request-ID": "client-7"})
    assert response.status_code == 202 and response.headers["X-Request-ID"] == "client-7"
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        job = session.get(RequestLog, response.get_json()["job_id"])
        assert job is not None and job.request_id == "client-7"


def test_errors_get_a_generated_request_id_too(client: FlaskClient) -> None:
    first = client.get("/api/jobs/nope", headers={"X-Request-ID": "bad id"})
    second = client.get("/api/jobs/nope")
    assert first.status_code == second.status_code == 404
    ids = {first.headers["X-Request-ID"], second.headers["X-Request-ID"]}
    assert len(ids) == 2 and "bad id" not in ids


def test_request_and_job_lines_carry_the_request_id_but_never_the_prompt_or_key(keyed_app, log_lines) -> None:
    key = _key(keyed_app)
    response = keyed_app.test_client().post(
        "/api/prompt",
        json={"prompt": SECRET_PROMPT, "wait": False},
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": "req-logs-1"},
    )
    assert response.status_code == 202
    lines = _parsed(log_lines)
    by_event = {line.get("event"): line for line in lines}
    request_line, accepted = by_event["http_request"], by_event["job_accepted"]
    assert (request_line["route"], request_line["status"]) == ("/api/prompt", 202)
    assert request_line["request_id"] == "req-logs-1"
    assert (accepted["job_id"], accepted["request_id"]) == (response.get_json()["job_id"], "req-logs-1")
    assert "prompt" not in accepted
    assert SECRET_PROMPT not in log_lines.getvalue() and "4242-SECRET" not in log_lines.getvalue()
    assert key not in log_lines.getvalue()


def test_log_prompts_puts_the_prompt_in_the_accepted_line(database_url, monkeypatch, log_lines) -> None:
    app = _make_app(database_url, monkeypatch, log_prompts=True)
    job_id = app.test_client().post("/api/prompt", json={"prompt": SECRET_PROMPT, "wait": False}).get_json()["job_id"]
    (accepted,) = [line for line in _parsed(log_lines) if line.get("event") == "job_accepted"]
    assert (accepted["job_id"], accepted["prompt"]) == (job_id, SECRET_PROMPT)
    app.extensions["db_engine"].dispose()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_by_route_rule_not_raw_path(client: FlaskClient) -> None:
    def count(route: str) -> float:
        text = client.get("/metrics").get_data(as_text=True)
        labels = (("method", "GET"), ("route", route), ("status", "404"))
        return _samples(text).get(("model_router_http_requests_total", labels), 0.0)

    before = count("/api/jobs/<job_id>")
    client.get("/api/jobs/one")
    client.get("/api/jobs/two")
    assert count("/api/jobs/<job_id>") == before + 2


def test_metrics_are_open_when_api_keys_are_off(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    assert "model_router_queue_depth" in response.text and "model_router_circuit_state" in response.text


def test_metrics_need_an_admin_key_when_api_keys_are_required(keyed_app: Flask) -> None:
    client = keyed_app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {_key(keyed_app)}"}).status_code == 403
    admin = client.get("/metrics", headers={"Authorization": f"Bearer {_key(keyed_app, is_admin=True)}"})
    assert admin.status_code == 200 and "model_router_http_requests_total" in admin.text


def test_metrics_public_opens_metrics_even_when_keys_are_required(database_url, monkeypatch) -> None:
    app = _make_app(database_url, monkeypatch, require_api_key=True, metrics_public=True)
    client = app.test_client()
    assert client.get("/metrics").status_code == 200
    assert client.post("/api/prompt", json={"prompt": "Hi"}).status_code == 401
    app.extensions["db_engine"].dispose()


def _cancelled() -> float:
    labels = {"tier": "none", "model": "none", "outcome": "failed", "error_code": "cancelled"}
    return REGISTRY.get_sample_value("model_router_jobs_finished_total", labels) or 0.0


def test_cancelled_jobs_and_batch_items_are_counted_as_finished(client: FlaskClient, enqueued) -> None:
    before = _cancelled()
    job_id = client.post("/api/prompt", json={"prompt": "Hi", "wait": False}).get_json()["job_id"]
    assert client.delete(f"/api/jobs/{job_id}").status_code == 200
    batch_id = client.post("/api/batch", json={"prompts": ["One?", "Two?"]}).get_json()["batch_id"]
    assert client.delete(f"/api/batch/{batch_id}").get_json()["cancelled"] == 2
    assert client.delete(f"/api/jobs/{job_id}").status_code == 409
    assert _cancelled() == before + 3
