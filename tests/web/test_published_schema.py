"""Every answer the app gives validates against what /openapi.json publishes for its route and status.

The response models forbid fields they do not declare (`additionalProperties: false`), so a view that sends a
field its model lacks, or renames one, fails here; a dropped field fails as a missing required one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from shared.errors import PermanentLLMError
from shared.errors import TransientLLMError
from shared.ledger import api_keys
from shared.routing.catalog import Catalog
from shared.store.session import make_sessionmaker
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import TimedOutWaiter
from web.api import health

Operation = tuple[str, str, int]  # method, path template, status


class CheckedClient:
    """A test client that validates each answer against the published document and notes what it covered."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.spec: dict[str, Any] = client.get("/openapi.json").get_json()
        self.covered: set[Operation] = set()
        self._templates = [
            (re.compile("^" + re.sub(r"\{[a-z_]+\}", "[^/]+", path) + "$"), path) for path in self.spec["paths"]
        ]

    def __call__(self, method: str, url: str, **kwargs: Any) -> TestResponse:
        response = self.client.open(url, method=method.upper(), **kwargs)
        path = next(template for pattern, template in self._templates if pattern.match(url.split("?")[0]))
        answers = self.spec["paths"][path][method]["responses"]
        status = response.status_code
        assert str(status) in answers, f"{method} {path} answered {status}, which is not published"
        content = answers[str(status)]["content"]
        assert response.mimetype in content, f"{method} {path} {status}: {response.mimetype} is not published"
        schema = content[response.mimetype]["schema"]
        for body, reference in self._bodies(response, schema):
            errors = [error.message for error in self._validator(reference).iter_errors(body)]
            assert errors == [], (method, path, status, body)
        self.covered.add((method, path, status))
        return response

    def _bodies(self, response: TestResponse, schema: dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
        """Return each JSON body of the answer with the schema it must meet."""
        if response.mimetype == "application/json":
            return [(response.get_json(), schema)]
        text = response.get_data(as_text=True)
        if response.mimetype == "application/x-ndjson":  # a batch's jobs, one per line
            return [(json.loads(line), self._ref("JobResult")) for line in text.splitlines()]
        assert response.mimetype == "text/event-stream"
        events = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
        assert events, text
        bodies = [json.loads(event) for event in events if event != "[DONE]"]
        return [(body, self._ref("OpenAIErrorBody" if "error" in body else "ChatCompletionChunk")) for body in bodies]

    @staticmethod
    def _ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def _validator(self, schema: dict[str, Any]) -> Any:
        return jsonschema_rs.validator_for({**schema, "components": self.spec["components"]})

    def published(self, *, paths: Callable[[str], bool] = lambda _: True) -> set[Operation]:
        return {
            (method, path, int(status))
            for path, item in self.spec["paths"].items()
            if paths(path)
            for method, operation in item.items()
            for status in operation["responses"]
        }


def _key(app: Flask, name: str, **options: Any) -> str:
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        return api_keys.create(session, name=name, **options)[1]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


CHAT = {"model": "router", "messages": [{"role": "user", "content": "Hi"}]}


def test_queued_jobs_batches_and_reads_answer_as_published(
    app: Flask, client: FlaskClient, enqueued: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No job runs here: every wait times out at once (202 for a prompt, 504 for a completion).
    monkeypatch.setitem(app.extensions, "waiter", TimedOutWaiter())
    call = CheckedClient(client)
    too_large = {"prompt": "x" * (app.extensions["settings"].max_request_bytes + 1)}
    call("get", "/api/health")
    call("get", "/livez")
    call("get", "/readyz")
    created = call("post", "/api/keys", json={"name": "ops", "tpm": 1000, "allowed_models": ["gpt-4"]}).get_json()
    key_url = f"/api/keys/{created['id']}"
    call("post", "/api/keys", json={"name": ""})
    call("post", "/api/keys", json={"name": "x" * (app.extensions["settings"].max_request_bytes + 1)})
    call("post", "/api/keys", data="x", content_type="text/plain")
    call("get", "/api/keys")
    call("get", key_url)
    call("get", "/api/keys/999999")
    call("patch", key_url, json={"rpm": 5, "monthly_budget": 1.5})
    call("patch", key_url, json={"rpm": 0})
    call("patch", key_url, data="x", content_type="text/plain")
    call("patch", "/api/keys/999999", json={"rpm": 5})
    call("delete", key_url)
    call("delete", "/api/keys/999999")
    queued = call("post", "/api/prompt", json={"prompt": "Hi", "wait": False, "metadata": {"a": 1}}).get_json()
    job_url = f"/api/jobs/{queued['job_id']}"
    call("get", job_url)
    call("get", "/api/jobs/nope")
    call("get", "/api/jobs?status=queued&limit=5")
    call("get", "/api/jobs?limit=0")
    call("post", "/api/prompt", data="x", content_type="text/plain")
    call("post", "/api/prompt", json={"prompt": ""})
    call("post", "/api/prompt", json=too_large)
    first = call("post", "/api/prompt", json={"prompt": "A", "wait": False}, headers={"Idempotency-Key": "k1"})
    call("post", "/api/prompt", json={"prompt": "B", "wait": False}, headers={"Idempotency-Key": "k1"})
    call("delete", f"/api/jobs/{first.get_json()['job_id']}")
    again = call("post", "/api/prompt", json={"prompt": "A", "wait": False}, headers={"Idempotency-Key": "k1"})
    assert again.get_json()["status"] == "failed"  # a repeated request answers its job as it stands
    for url in ("/api/estimate", "/api/batch", "/v1/chat/completions"):
        call("post", url, json=too_large)
        call("post", url, data="x", content_type="text/plain")
    call("post", "/api/estimate", json={"prompt": "What is 2 + 2?"})
    call("post", "/api/estimate", json={"prompt": "Hi", "tier": "nope"})
    batch = call("post", "/api/batch", json={"prompts": ["one", {"prompt": "two"}]}).get_json()
    call("post", "/api/batch", json={"prompts": []})
    call("get", f"/api/batch/{batch['batch_id']}")
    call("get", f"/api/batch/{batch['batch_id']}?format=jsonl")
    call("delete", f"/api/batch/{batch['batch_id']}")
    call("get", "/api/batch/nope")
    call("delete", "/api/batch/nope")
    call("delete", "/api/jobs/nope")
    call("delete", job_url)
    call("delete", job_url)  # finished now: 409
    call("get", job_url)  # failed (cancelled)
    call("get", "/api/budget")
    call("get", "/api/budget?scope=nobody")
    call("delete", "/api/budget/hold")
    call("delete", "/api/budget/hold?scope=nobody")
    call("get", "/api/stats")
    call("get", "/api/stats?since=yesterday")
    call("get", "/api/reports/costs?period=week")
    call("get", "/api/reports/costs?period=year")
    call("get", "/v1/models")
    call("post", "/v1/chat/completions", json={**CHAT, "model": "nope"})
    call("post", "/api/batch", json={"prompts": ["A"]}, headers={"Idempotency-Key": "k2"})
    call("post", "/api/batch", json={"prompts": ["B"]}, headers={"Idempotency-Key": "k2"})
    call("post", "/v1/chat/completions", json={**CHAT, "model": "gpt-4"}, headers={"Idempotency-Key": "k3"})
    call("post", "/v1/chat/completions", json=CHAT, headers={"Idempotency-Key": "k3"})
    app.extensions["settings"] = app.extensions["settings"].model_copy(update={"monthly_budget_limit": Decimal(0)})
    call("post", "/api/prompt", json={"prompt": "Hi", "wait": False})
    call("post", "/api/batch", json={"prompts": ["one"]})
    call("post", "/v1/chat/completions", json=CHAT)

    def broker_down(*_: Any, **__: Any) -> None:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(health.redis_clients, "fast_failing", broker_down)
    call("get", "/api/health")
    call("get", "/readyz")
    from worker import tasks

    monkeypatch.setattr(tasks.run_job, "apply_async", broker_down)
    app.extensions["settings"] = app.extensions["settings"].model_copy(update={"monthly_budget_limit": Decimal(100)})
    call("post", "/api/prompt", json={"prompt": "Hi", "wait": False})
    call("post", "/api/batch", json={"prompts": ["one"]})
    call("post", "/v1/chat/completions", json=CHAT)
    assert call.covered == EXPECTED_WITHOUT_WORKER


EXPECTED_WITHOUT_WORKER = {
    ("get", "/api/health", 200),
    ("get", "/api/health", 503),
    ("get", "/livez", 200),
    ("get", "/api/keys", 200),
    ("post", "/api/keys", 201),
    ("post", "/api/keys", 400),
    ("post", "/api/keys", 413),
    ("post", "/api/keys", 415),
    ("get", "/api/keys/{key_id}", 200),
    ("get", "/api/keys/{key_id}", 404),
    ("patch", "/api/keys/{key_id}", 200),
    ("patch", "/api/keys/{key_id}", 400),
    ("patch", "/api/keys/{key_id}", 404),
    ("patch", "/api/keys/{key_id}", 415),
    ("delete", "/api/keys/{key_id}", 200),
    ("delete", "/api/keys/{key_id}", 404),
    ("get", "/readyz", 200),
    ("get", "/readyz", 503),
    ("post", "/api/prompt", 202),
    ("post", "/api/prompt", 400),
    ("post", "/api/prompt", 402),
    ("post", "/api/prompt", 409),
    ("post", "/api/prompt", 413),
    ("post", "/api/prompt", 415),
    ("post", "/api/prompt", 503),
    ("post", "/api/estimate", 200),
    ("post", "/api/estimate", 400),
    ("post", "/api/estimate", 413),
    ("post", "/api/estimate", 415),
    ("get", "/api/jobs", 200),
    ("get", "/api/jobs", 400),
    ("get", "/api/jobs/{job_id}", 200),
    ("get", "/api/jobs/{job_id}", 404),
    ("delete", "/api/jobs/{job_id}", 200),
    ("delete", "/api/jobs/{job_id}", 404),
    ("delete", "/api/jobs/{job_id}", 409),
    ("post", "/api/batch", 202),
    ("post", "/api/batch", 400),
    ("post", "/api/batch", 402),
    ("post", "/api/batch", 409),
    ("post", "/api/batch", 413),
    ("post", "/api/batch", 415),
    ("post", "/api/batch", 503),
    ("get", "/api/batch/{batch_id}", 200),
    ("get", "/api/batch/{batch_id}", 404),
    ("delete", "/api/batch/{batch_id}", 200),
    ("delete", "/api/batch/{batch_id}", 404),
    ("get", "/api/budget", 200),
    ("get", "/api/budget", 400),
    ("delete", "/api/budget/hold", 200),
    ("delete", "/api/budget/hold", 400),
    ("get", "/api/stats", 200),
    ("get", "/api/stats", 400),
    ("get", "/api/reports/costs", 200),
    ("get", "/api/reports/costs", 400),
    ("get", "/v1/models", 200),
    ("post", "/v1/chat/completions", 400),
    ("post", "/v1/chat/completions", 402),
    ("post", "/v1/chat/completions", 409),
    ("post", "/v1/chat/completions", 413),
    ("post", "/v1/chat/completions", 415),
    ("post", "/v1/chat/completions", 503),
    ("post", "/v1/chat/completions", 504),
}


def test_finished_jobs_and_completions_answer_as_published(
    client: FlaskClient, worker: list[str], llm: FakeLLMClient, catalog: Catalog
) -> None:
    call = CheckedClient(client)
    call("post", "/api/prompt", json={"prompt": "What is the capital of France?", "timeout_s": 10})
    call("post", "/v1/chat/completions", json=CHAT)
    call("post", "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    call("post", "/v1/chat/completions", json={**CHAT, "model": "gpt-4", "stream": True})
    for model in catalog.model_names:
        llm.script(model, *[PermanentLLMError("no", status_code=400)] * 10)
    failed = call("post", "/api/prompt", json={"prompt": "Hi", "timeout_s": 10, "model": "gpt-3.5-turbo"})
    assert failed.get_json()["status"] == "failed"
    call("post", "/v1/chat/completions", json={**CHAT, "model": "gpt-4"})
    llm.scripts.clear()
    down = TransientLLMError("down", status_code=503, details={"error_class": "server_error"})
    for model in catalog.model_names:
        llm.script(model, *[down] * 10)
    call("post", "/v1/chat/completions", json={**CHAT, "model": "gpt-3.5-turbo"})
    assert call.covered == EXPECTED_WITH_WORKER


EXPECTED_WITH_WORKER = {
    ("post", "/api/prompt", 200),
    ("post", "/v1/chat/completions", 200),
    ("post", "/v1/chat/completions", 502),
    ("post", "/v1/chat/completions", 503),
}


def test_keyed_answers_answer_as_published(keyed_app: Flask) -> None:
    call = CheckedClient(keyed_app.test_client())
    user = _auth(_key(keyed_app, "user"))
    urls = {
        ("post", "/api/prompt"): {"json": {"prompt": "Hi", "wait": False}},
        ("post", "/api/estimate"): {"json": {"prompt": "Hi"}},
        ("get", "/api/jobs"): {},
        ("get", "/api/jobs/nope"): {},
        ("delete", "/api/jobs/nope"): {},
        ("post", "/api/batch"): {"json": {"prompts": ["one"]}},
        ("get", "/api/batch/nope"): {},
        ("delete", "/api/batch/nope"): {},
        ("get", "/api/budget"): {},
        ("delete", "/api/budget/hold"): {},
        ("get", "/api/stats"): {},
        ("get", "/api/reports/costs"): {},
        ("post", "/v1/chat/completions"): {"json": CHAT},
        ("get", "/v1/models"): {},
        ("get", "/api/keys"): {},
        ("post", "/api/keys"): {"json": {"name": "k"}},
        ("get", "/api/keys/1"): {},
        ("patch", "/api/keys/1"): {"json": {"rpm": 5}},
        ("delete", "/api/keys/1"): {},
    }
    for (method, url), kwargs in urls.items():
        call(method, url, **kwargs)  # no key: 401
    call("delete", "/api/budget/hold", headers=user)  # not an admin: 403
    call("get", "/api/budget?scope=global", headers=user)
    narrowed = _auth(_key(keyed_app, "narrowed", allowed_models=["gpt-3.5-turbo"]))
    forcing = {"prompt": "Hi", "model": "gpt-4"}
    call("post", "/api/prompt", json=forcing, headers=narrowed)  # a model the key may not use: 403
    call("post", "/api/estimate", json=forcing, headers=narrowed)
    call("post", "/api/batch", json={"prompts": [forcing]}, headers=narrowed)
    call("post", "/v1/chat/completions", json={**CHAT, "model": "gpt-4"}, headers=narrowed)
    for (method, url), kwargs in urls.items():
        if url.startswith("/api/keys"):
            call(method, url, headers=user, **kwargs)  # not an admin: 403
    busy = _auth(_key(keyed_app, "busy", rpm=1))
    call("get", "/api/budget", headers=busy)  # its one request of the minute
    for (method, url), kwargs in urls.items():
        call(method, url, headers=busy, **kwargs)  # 429
    unlimited = call.published(paths=lambda path: path not in ("/api/health", "/livez", "/readyz"))
    refused = {(method, path, status) for method, path, status in unlimited if status in (401, 429)}
    assert refused <= call.covered
    assert {(m, p, s) for m, p, s in call.published() if s == 403} <= call.covered


def test_every_published_answer_that_can_happen_in_process_is_exercised(client: FlaskClient) -> None:
    published = CheckedClient(client).published()
    keyed = {(m, p, s) for m, p, s in published if s in (401, 403, 429)}
    assert published == EXPECTED_WITHOUT_WORKER | EXPECTED_WITH_WORKER | keyed
