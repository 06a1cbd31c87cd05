"""The response cache at the HTTP edge: hits on /api/prompt and /v1, bypasses, tenants, and Redis outages."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.jobs import runs
from shared.ledger import api_keys
from shared.routing.catalog import Catalog
from shared.store import completion_channel
from shared.store import stream_relay
from shared.store.base import Base
from shared.store.models import MonthlyBudget
from shared.store.session import make_sessionmaker
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import make_test_settings
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from worker import tasks

QUESTION = "What is the capital of France?"


@pytest.fixture
def make_app(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Yield a maker of apps with these settings overrides, all on one database."""
    from web.app import create_app

    # Cached answers outlive a test in Redis: start and end with an empty database.
    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()
    made: list[Flask] = []

    def make(**overrides: object) -> Flask:
        app = create_app(make_test_settings(database_url, **overrides))
        app.config["TESTING"] = True
        Base.metadata.create_all(app.extensions["db_engine"])
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["db_engine"].dispose()
    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def _run_jobs_inline(app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> FakeLLMClient:
    """Run each job as soon as it is enqueued, as a worker keeping answers would; return the upstream."""
    settings = app.extensions["settings"]
    client = redis.Redis.from_url(settings.redis_url)
    upstream = FakeLLMClient()
    deps = worker_deps(
        app,
        catalog,
        upstream,
        on_finished=lambda job_id: completion_channel.publish_job_done(client, job_id),
        relay=lambda job_id, entry: stream_relay.append(client, job_id, entry),
        response_cache=client,
    )
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: runs.run(args[0], deps=deps))
    return upstream


@pytest.fixture
def upstream(app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> FakeLLMClient:
    return _run_jobs_inline(app, catalog, monkeypatch)


def _ledgers(app: Flask) -> list[tuple[str, Decimal, Decimal, int]]:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        rows = session.scalars(select(MonthlyBudget).order_by(MonthlyBudget.scope))
        return [(row.scope, row.total_spent, row.reserved, row.request_count) for row in rows]


def _ask(client: FlaskClient, **fields: object) -> dict:
    response = client.post("/api/prompt", json={"prompt": QUESTION, **fields})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_a_repeated_prompt_is_answered_from_the_cache_at_no_cost(
    client: FlaskClient, app: Flask, upstream: FakeLLMClient
) -> None:
    first = _ask(client)
    ledgers = _ledgers(app)
    second = _ask(client)
    assert upstream.calls == ["gpt-3.5-turbo"]
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["job_id"] != first["job_id"]
    assert (second["status"], second["success"], second["cost"], second["attempts"]) == ("succeeded", True, 0, [])
    for field in ("response", "model_used", "tier", "difficulty_level", "prompt_tokens", "completion_tokens"):
        assert second[field] == first[field], field
    assert _ledgers(app) == ledgers
    assert client.get(f"/api/jobs/{second['job_id']}").get_json()["cached"] is True
    stats = client.get("/api/stats").get_json()
    assert (stats["total_requests"], stats["cache_hits"]) == (2, 1)


def test_a_cached_answer_without_waiting_is_accepted_finished(client: FlaskClient, upstream: FakeLLMClient) -> None:
    _ask(client)
    response = client.post("/api/prompt", json={"prompt": QUESTION, "wait": False})
    assert response.status_code == 202
    accepted = response.get_json()
    assert accepted["status"] == "succeeded" and response.headers["Location"] == accepted["poll_url"]
    assert client.get(accepted["poll_url"]).get_json()["cached"] is True
    assert len(upstream.calls) == 1


def test_cache_false_calls_the_upstream_and_keeps_nothing(client: FlaskClient, upstream: FakeLLMClient) -> None:
    assert _ask(client, cache=False)["cached"] is False
    assert _ask(client)["cached"] is False
    assert _ask(client, cache=False)["cached"] is False
    assert len(upstream.calls) == 3


def test_a_changed_parameter_misses(client: FlaskClient, upstream: FakeLLMClient) -> None:
    _ask(client)
    assert _ask(client, max_tokens=999)["cached"] is False
    assert _ask(client, preference="quality")["cached"] is False
    assert _ask(client, tier="mid")["cached"] is False
    assert len(upstream.calls) == 4


def test_a_key_is_never_given_another_keys_answer(
    make_app: Callable[..., Flask], catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(require_api_key=True)
    upstream = _run_jobs_inline(app, catalog, monkeypatch)
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        _, first_key = api_keys.create(session, name="first")
        _, second_key = api_keys.create(session, name="second")
    client = app.test_client()
    answers = [_ask_as(client, first_key), _ask_as(client, second_key), _ask_as(client, first_key)]
    assert [answer["cached"] for answer in answers] == [False, False, True]
    assert len(upstream.calls) == 2


def _ask_as(client: FlaskClient, key: str) -> dict:
    response = client.post("/api/prompt", json={"prompt": QUESTION}, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_an_unreachable_cache_lets_every_request_through(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on port 1; the job queue is faked, so only the cache needs Redis.
    client = make_app(redis_url="redis://127.0.0.1:1/0").test_client()
    sent: list[str] = []
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: sent.append(args[0]))
    for _ in range(2):
        response = client.post("/api/prompt", json={"prompt": QUESTION, "wait": False})
        assert response.status_code == 202, response.get_json()
    assert len(sent) == 2


def test_a_cached_answer_is_posted_to_its_callback(
    make_app: Callable[..., Flask], catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(webhook_secret="signing-secret")
    _run_jobs_inline(app, catalog, monkeypatch)
    delivered: list[list[str]] = []
    monkeypatch.setattr(tasks.deliver_callback, "apply_async", lambda args, **_: delivered.append(args))
    client = app.test_client()
    _ask(client)
    cached = _ask(client, callback_url="https://hooks.example.com/hook")
    assert cached["cached"] is True
    assert delivered == [["job", cached["job_id"]]]


@pytest.fixture
def sdk(app: Flask) -> Iterator[openai.OpenAI]:
    http_client = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://router.test")
    client = openai.OpenAI(api_key="unused", base_url="http://router.test/v1", http_client=http_client, max_retries=0)
    yield client
    client.close()


CHAT = [{"role": "user", "content": QUESTION}]


def test_a_repeated_chat_completion_is_answered_from_the_cache(
    sdk: openai.OpenAI, app: Flask, upstream: FakeLLMClient
) -> None:
    first = sdk.chat.completions.with_raw_response.create(model="router", messages=CHAT, temperature=0)
    ledgers = _ledgers(app)
    second = sdk.chat.completions.with_raw_response.create(model="router", messages=CHAT, temperature=0)
    assert upstream.calls == ["gpt-3.5-turbo"]
    assert (first.headers["x-router-cached"], second.headers["x-router-cached"]) == ("false", "true")
    assert float(second.headers["x-router-cost"]) == 0
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().usage == first.parse().usage
    assert _ledgers(app) == ledgers


def test_chat_bypasses_the_cache_when_sampling_streaming_or_told_to(
    sdk: openai.OpenAI, upstream: FakeLLMClient
) -> None:
    sdk.chat.completions.create(model="router", messages=CHAT)
    for _ in range(2):
        sdk.chat.completions.create(model="router", messages=CHAT, temperature=0.7)
    sdk.chat.completions.create(model="router", messages=CHAT, extra_body={"cache": False})
    assert "".join(chunk.choices[0].delta.content or "" for chunk in _stream(sdk) if chunk.choices)
    assert len(upstream.calls) == 5


def _stream(sdk: openai.OpenAI) -> openai.Stream:
    return sdk.chat.completions.create(model="router", messages=CHAT, stream=True)
