"""A synchronous request is woken by its own job's announcement and answers with the body it left, while no
prompt or answer crosses a Redis channel; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from shared.store import completion_channel
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import run_jobs_soon
from tests.conftest import worker_deps
from tests.support.channels import Eavesdropper
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

# Longer than any request here waits: only its announcement can wake it in time.
NO_RECHECK_S = 60.0


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(UNIT_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def eavesdropper(server: redis.Redis) -> Iterator[Eavesdropper]:
    listening = Eavesdropper(UNIT_REDIS_URL)
    yield listening
    listening.close()


@pytest.fixture
def upstream(app: Flask, catalog, monkeypatch: pytest.MonkeyPatch, server: redis.Redis) -> Iterator[FakeLLMClient]:
    """A stand-in worker announcing each job with its body, as worker.runtime does."""
    fake = FakeLLMClient()
    deps = worker_deps(
        app, catalog, fake, on_answered=lambda job_id, body: completion_channel.publish_job_done(server, job_id, body)
    )
    workers, _ = run_jobs_soon(monkeypatch, deps)
    app.extensions["waiter"].recheck_s = NO_RECHECK_S
    yield fake
    for worker in workers:
        worker.join()


def test_the_answer_is_the_announced_body_and_no_text_crosses_a_channel(
    client: FlaskClient, upstream: FakeLLMClient, server: redis.Redis, eavesdropper: Eavesdropper
) -> None:
    question, answer = f"What is {uuid.uuid4().hex}?", f"It is {uuid.uuid4().hex}, of course."
    for model in ("gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"):
        upstream.script(model, ok(answer))

    started = time.monotonic()
    response = client.post("/api/prompt", json={"prompt": question, "timeout_s": 10})

    assert response.status_code == 200, response.get_json()
    assert time.monotonic() - started < 5.0
    body = response.get_json()
    assert (body["prompt"], body["response"]) == (question, answer)
    assert body == client.get(f"/api/jobs/{body['job_id']}").get_json()
    heard = eavesdropper.heard()
    assert [m for m in heard for text in (question, answer) if text.encode() in m[0] + m[1]] == []
    assert (completion_channel.channel(body["job_id"]).encode(), body["job_id"].encode()) in heard
    assert server.keys("*") == []  # the body was taken


def test_concurrent_waiters_each_get_their_own_answer(app: Flask, upstream: FakeLLMClient, server: redis.Redis) -> None:
    prompts = [f"Question number {index}: {uuid.uuid4().hex}" for index in range(8)]

    def ask(prompt: str) -> dict:
        response = app.test_client().post("/api/prompt", json={"prompt": prompt, "timeout_s": 10})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))

    assert [answer["prompt"] for answer in answers] == prompts
    assert len({answer["job_id"] for answer in answers}) == len(prompts)
    assert server.keys("*") == []


def test_a_chat_completion_leaves_no_body_behind(
    client: FlaskClient, upstream: FakeLLMClient, server: redis.Redis, eavesdropper: Eavesdropper
) -> None:
    question = f"What is {uuid.uuid4().hex}?"
    response = client.post(
        "/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": question}]}
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["choices"][0]["message"]["content"]
    assert [m for m in eavesdropper.heard() if question.encode() in m[1]] == []
    assert server.keys("*") == []
