"""The published schema says what the bodies are: real answers validate, and what every answer carries is required."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.errors import PermanentLLMError
from shared.jobs import runs
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok
from web.openapi import build_openapi_spec

SPEC = build_openapi_spec(version="test")
SCHEMAS = SPEC["components"]["schemas"]


def _validator(name: str) -> Any:
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]})


@pytest.fixture
def bodies(client: FlaskClient, app: Flask, catalog, enqueued: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Answers of every kind that carry a job: queued, succeeded, failed, a batch's, and the batch itself."""
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", ok(), PermanentLLMError("no", status_code=400))
    fake.script("gpt-4", PermanentLLMError("no", status_code=400))
    deps = worker_deps(app, catalog, fake, sleep=lambda _: None)
    queued = client.post("/api/prompt", json={"prompt": "Hi", "wait": False, "metadata": {"a": 1}}).get_json()
    succeeded = client.post("/api/prompt", json={"prompt": "Hi there", "wait": False}).get_json()
    failed = client.post("/api/prompt", json={"prompt": "Hi again", "wait": False}).get_json()
    batch = client.post("/api/batch", json={"prompts": ["one", "two"]}).get_json()
    for job_id in (succeeded["job_id"], failed["job_id"]):
        runs.run(job_id, deps=deps)
    jobs = [client.get(f"/api/jobs/{body['job_id']}").get_json() for body in (queued, succeeded, failed)]
    batch_view = client.get(f"/api/batch/{batch['batch_id']}").get_json()
    assert {job["status"] for job in jobs} == {"queued", "succeeded", "failed"}
    return {
        "JobResult": [*jobs, *batch_view["jobs"]],
        "JobAccepted": [queued, succeeded, failed],
        "BatchAccepted": [batch],
        "BatchResult": [batch_view],
    }


@pytest.mark.parametrize("name", ["JobResult", "JobAccepted", "BatchAccepted", "BatchResult"])
def test_every_field_every_answer_carries_is_required(bodies: dict[str, list[dict[str, Any]]], name: str) -> None:
    always = set.intersection(*(set(body) for body in bodies[name]))
    assert always - set(SCHEMAS[name].get("required", [])) == set()


@pytest.mark.parametrize("name", ["JobResult", "JobAccepted", "BatchAccepted", "BatchResult"])
def test_real_answers_validate_against_the_published_schema(bodies: dict[str, list[dict[str, Any]]], name: str) -> None:
    validator = _validator(name)
    for body in bodies[name]:
        assert set(body) <= set(SCHEMAS[name]["properties"]), "an answer carries a field the schema does not declare"
        errors = [error.message for error in validator.iter_errors(body)]
        assert errors == [], body


def test_cached_is_a_required_boolean() -> None:
    job = SCHEMAS["JobResult"]
    assert job["properties"]["cached"]["type"] == "boolean"
    assert "cached" in job["required"]
