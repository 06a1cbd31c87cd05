"""Batches, Idempotency-Key and cancellation at the HTTP edge (enqueueing recorded, not sent)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func
from sqlalchemy import select

from shared.jobs import runs
from shared.ledger import api_keys
from shared.store.models import IdempotencyKey
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient


def _count(app: Flask, model: type) -> int:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return session.scalar(select(func.count()).select_from(model))


def _ledger(app: Flask) -> MonthlyBudget:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return session.scalars(select(MonthlyBudget)).one()


def test_a_batch_is_accepted_reserved_and_enqueued_in_order(client: FlaskClient, app: Flask, enqueued) -> None:
    items = ["What is 2 + 2?", {"prompt": "Name a colour.", "max_tokens": 50}, {"prompt": "Hi", "tier": "mid"}]
    response = client.post("/api/batch", json={"prompts": items})
    assert response.status_code == 202
    body = response.get_json()
    assert enqueued == body["job_ids"] and len(body["job_ids"]) == 3
    assert response.headers["Location"] == body["poll_url"] == f"/api/batch/{body['batch_id']}"
    view = client.get(body["poll_url"]).get_json()
    assert (view["status"], view["total"], view["pending"], view["succeeded"]) == ("running", 3, 3, 0)
    assert [job["job_id"] for job in view["jobs"]] == body["job_ids"]
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        rows = session.scalars(select(RequestLog).order_by(RequestLog.batch_index)).all()
    assert [row.prompt for row in rows] == ["What is 2 + 2?", "Name a colour.", "Hi"]
    ledger = _ledger(app)
    assert ledger.reserved == sum((row.reserved_cost for row in rows), Decimal(0))
    assert ledger.request_count == 3


@pytest.mark.parametrize(
    ("items", "index", "field"),
    [
        (["ok", "  "], 1, "prompts[1].prompt"),
        (["ok", {"prompt": "x", "max_tokens": 0}], 1, "prompts[1].max_tokens"),
        ([{"prompt": "x", "model": "gpt-9"}], 0, "prompts[0].model"),
        (["ok", "fine", 42], 2, "prompts[2]"),
        (["ok", {"prompt": "x", "wait": True}], 1, "prompts[1].wait"),
    ],
)
def test_one_bad_item_rejects_the_whole_batch_naming_it(client, app, enqueued, items, index, field) -> None:
    response = client.post("/api/batch", json={"prompts": items})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["details"]["index"], error["details"]["field"]) == ("invalid_request", index, field)
    assert (_count(app, RequestLog), enqueued) == (0, [])


@pytest.mark.parametrize("prompts", [[], ["x"] * 1001])
def test_a_batch_has_1_to_1000_items(client: FlaskClient, enqueued, prompts) -> None:
    response = client.post("/api/batch", json={"prompts": prompts})
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "prompts"


def test_a_batch_that_does_not_fit_is_refused_whole(client: FlaskClient, app: Flask, enqueued) -> None:
    app.extensions["settings"] = app.extensions["settings"].model_copy(update={"monthly_budget_limit": Decimal("0.2")})
    response = client.post("/api/batch", json={"prompts": ["Hello there"] * 50})
    assert response.status_code == 402
    assert (_count(app, RequestLog), enqueued) == (0, [])


def test_the_jsonl_format_streams_one_job_per_line_in_order(client: FlaskClient, enqueued) -> None:
    batch = client.post("/api/batch", json={"prompts": ["a", "b", "c"]}).get_json()
    response = client.get(f"{batch['poll_url']}?format=jsonl")
    assert response.mimetype == "application/x-ndjson"
    lines = [line for line in response.get_data(as_text=True).splitlines() if line]
    assert [__import__("json").loads(line)["job_id"] for line in lines] == batch["job_ids"]


def test_cancelling_a_batch_releases_what_has_not_started(client, app, catalog, enqueued) -> None:
    batch = client.post("/api/batch", json={"prompts": ["a", "b", "c"]}).get_json()
    deps = worker_deps(app, catalog, FakeLLMClient(), sleep=lambda _: None)
    runs.run(batch["job_ids"][0], deps=deps)
    body = client.delete(batch["poll_url"]).get_json()
    assert (body["cancelled"], body["status"], body["succeeded"], body["failed"]) == (2, "completed", 1, 2)
    assert [job.get("error", {}).get("code") for job in body["jobs"]] == [None, "cancelled", "cancelled"]
    ledger = _ledger(app)
    assert ledger.reserved == Decimal(0)
    assert ledger.total_spent == Decimal(str(body["jobs"][0]["cost"]))


def test_cancelling_a_queued_job_releases_it_and_a_finished_one_is_409(client, app, catalog, enqueued) -> None:
    queued = client.post("/api/prompt", json={"prompt": "a", "wait": False}).get_json()["job_id"]
    done = client.post("/api/prompt", json={"prompt": "b", "wait": False}).get_json()["job_id"]
    deps = worker_deps(app, catalog, FakeLLMClient(), sleep=lambda _: None)
    runs.run(done, deps=deps)
    cancelled = client.delete(f"/api/jobs/{queued}")
    assert cancelled.status_code == 200
    assert (cancelled.get_json()["status"], cancelled.get_json()["error"]["code"]) == ("failed", "cancelled")
    refused = client.delete(f"/api/jobs/{done}")
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (409, "not_cancellable")
    assert client.delete("/api/jobs/nope").status_code == 404
    assert _ledger(app).reserved == Decimal(0)


def test_the_same_idempotency_key_and_body_return_the_same_job(client: FlaskClient, app: Flask, enqueued) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/api/prompt", json={"prompt": "Hi", "wait": False}, headers=headers).get_json()
    second = client.post("/api/prompt", json={"wait": False, "prompt": "Hi"}, headers=headers).get_json()
    assert first["job_id"] == second["job_id"]
    assert enqueued == [first["job_id"]]
    assert _count(app, RequestLog) == 1
    assert _ledger(app).request_count == 1


def test_the_same_idempotency_key_with_another_body_is_409(client: FlaskClient, app: Flask, enqueued) -> None:
    headers = {"Idempotency-Key": "order-42"}
    client.post("/api/prompt", json={"prompt": "Hi", "wait": False}, headers=headers)
    response = client.post("/api/prompt", json={"prompt": "Bye", "wait": False}, headers=headers)
    assert (response.status_code, response.get_json()["error"]["code"]) == (409, "idempotency_conflict")
    assert _count(app, RequestLog) == 1


def test_an_idempotent_batch_is_not_submitted_twice(client: FlaskClient, app: Flask, enqueued) -> None:
    headers = {"Idempotency-Key": "nightly-eval"}
    first = client.post("/api/batch", json={"prompts": ["a", "b"]}, headers=headers).get_json()
    second = client.post("/api/batch", json={"prompts": ["a", "b"]}, headers=headers).get_json()
    assert (first["batch_id"], first["job_ids"]) == (second["batch_id"], second["job_ids"])
    assert _count(app, RequestLog) == 2


@pytest.mark.parametrize(
    ("path", "body", "made"),
    [("/api/prompt", {"prompt": "Hi", "wait": False}, "job_id"), ("/api/batch", {"prompts": ["a", "b"]}, "batch_id")],
    ids=["prompt", "batch"],
)
def test_each_new_idempotency_key_makes_new_work_and_a_repeated_one_returns_it(
    client: FlaskClient, app: Flask, enqueued, path: str, body: dict, made: str
) -> None:
    def submit(key: str) -> str:
        response = client.post(path, json=body, headers={"Idempotency-Key": key})
        assert response.status_code == 202, response.get_json()
        return response.get_json()[made]

    first, repeated, second, third = submit("k-1"), submit("k-1"), submit("k-2"), submit("k-3")
    assert first == repeated and len({first, second, third}) == 3
    assert _count(app, IdempotencyKey) == 3
    assert client.get(f"{'/api/jobs' if made == 'job_id' else '/api/batch'}/{third}").status_code == 200


def test_one_idempotency_key_sent_by_two_api_keys_makes_work_for_each(keyed_app: Flask) -> None:
    client = keyed_app.test_client()
    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        keys = [api_keys.create(session, name=name)[1] for name in ("alice", "bob")]
    made = []
    for key in [*keys, keys[0]]:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "nightly"}
        response = client.post("/api/batch", json={"prompts": ["a"]}, headers=headers)
        assert response.status_code == 202, response.get_json()
        made.append(response.get_json()["batch_id"])
    alice, bob, alice_again = made
    assert alice == alice_again and bob != alice
    bobs_view = client.get(f"/api/batch/{bob}", headers={"Authorization": f"Bearer {keys[1]}"})
    assert bobs_view.status_code == 200


def test_a_refused_request_does_not_use_up_its_idempotency_key(client: FlaskClient, app: Flask, enqueued) -> None:
    headers = {"Idempotency-Key": "retry-me"}
    assert client.post("/api/prompt", json={"prompt": "x", "tier": "ultra"}, headers=headers).status_code == 400
    assert client.post("/api/prompt", json={"prompt": "x", "wait": False}, headers=headers).status_code == 202
    assert _count(app, IdempotencyKey) == 1


def test_a_callback_needs_a_signing_secret_and_an_http_url(client: FlaskClient, app: Flask, enqueued) -> None:
    body = {"prompt": "x", "wait": False, "callback_url": "https://hooks.example.com/hook"}
    assert client.post("/api/prompt", json=body).get_json()["error"]["details"]["field"] == "callback_url"
    app.extensions["settings"] = make_test_settings(app.extensions["settings"].database_url, webhook_secret="s")
    assert client.post("/api/prompt", json=body).status_code == 202
    for url in ("ftp://hooks.example.com/hook", "file:///etc/passwd", "not a url"):
        response = client.post("/api/prompt", json={**body, "callback_url": url})
        assert response.get_json()["error"]["details"]["field"] == "callback_url"


def test_callbacks_can_be_restricted_to_allowed_hosts(client: FlaskClient, app: Flask, enqueued) -> None:
    app.extensions["settings"] = make_test_settings(
        app.extensions["settings"].database_url,
        webhook_secret="s",
        webhook_allowed_hosts=["hooks.internal"],
        webhook_allowed_hosts_only=True,
    )
    body = {"prompt": "x", "wait": False, "callback_url": "https://hooks.example.com/hook"}
    assert client.post("/api/prompt", json=body).status_code == 400
    assert client.post("/api/prompt", json={**body, "callback_url": "https://hooks.internal/x"}).status_code == 202
