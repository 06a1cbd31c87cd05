"""An upstream that bills more than the bound: recorded as billed, flagged, counted, alerted, and spending stops.

Run on SQLite (the transactional accept and finish) and PostgreSQL (the single statements for a prompt, the
transactional finish for a batch item), through the web tier with a stand-in worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
import redis
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import select

from shared.ledger import alerts
from shared.ledger import call_bound
from shared.routing.catalog import Catalog
from shared.store import completion_channel
from shared.store.base import Base
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.upstream.llm_client import OpenAIChatClient
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import make_test_settings
from tests.conftest import run_jobs_soon
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok
from tests.support.sim import SimServer
from web import schemas

PROMPT = "What is the capital of France?"
# Far more than any bound of PROMPT: 2M prompt tokens of gpt-3.5-turbo are $1.
OVER_REPORTED = 2_000_000


@contextmanager
def _app(database_url: str, **overrides: object) -> Iterator[Flask]:
    from web.app import create_app

    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()
    app = create_app(make_test_settings(database_url, **overrides))
    app.config["TESTING"] = True
    Base.metadata.create_all(app.extensions["db_engine"])
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture
def any_app(database_url: str) -> Iterator[Flask]:
    """The app on SQLite, or on a fresh PostgreSQL database."""
    with _app(database_url, monthly_budget_limit=Decimal(10)) as app:
        yield app


@pytest.fixture
def any_keyed_app(database_url: str) -> Iterator[Flask]:
    """any_app with API keys required."""
    with _app(database_url, monthly_budget_limit=Decimal(10), require_api_key=True) as app:
        yield app


def _ledger(app: Flask) -> MonthlyBudget:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return session.scalars(select(MonthlyBudget)).one()


def _job(app: Flask, job_id: str) -> RequestLog:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return session.get(RequestLog, job_id)


def _over_bound_count(model: str) -> float:
    return REGISTRY.get_sample_value("model_router_usage_over_bound_total", {"model": model}) or 0.0


@pytest.mark.parametrize("via", ["prompt", "batch"])
def test_a_bill_over_the_bound_is_recorded_flagged_counted_alerted_and_stops_spending(
    any_app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    app, client = any_app, any_app.test_client()
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", ok(prompt_tokens=OVER_REPORTED, completion_tokens=24))
    fired: list[alerts.Announcement] = []
    publisher = redis.Redis.from_url(UNIT_REDIS_URL)
    deps = worker_deps(
        app, catalog, fake, on_alert=fired.append,
        on_answered=lambda job_id, body: completion_channel.publish_job_done(publisher, job_id, body),
    )  # fmt: skip
    workers, job_ids = run_jobs_soon(monkeypatch, deps)
    counted = _over_bound_count("gpt-3.5-turbo")
    item = {"prompt": PROMPT, "model": "gpt-3.5-turbo", "max_tokens": 100}
    if via == "prompt":
        response = client.post("/api/prompt", json={**item, "timeout_s": 10})
    else:
        response = client.post("/api/batch", json={"prompts": [item]})
    for worker in workers:
        worker.join()
    assert response.status_code in (200, 202), response.get_json()
    (job_id,) = job_ids

    billed = catalog.get_model("gpt-3.5-turbo").cost(OVER_REPORTED, 24)
    job = _job(app, job_id)
    bound = job.reserved_cost
    assert call_bound.call_bound(prompt=PROMPT, max_tokens=100).cost(catalog.get_model("gpt-4")) == bound < billed
    # The ledger tells the truth: the job costs what the upstream billed, and the month's spend says so.
    assert (job.cost, job.usage_over_bound, job.prompt_tokens) == (billed, True, OVER_REPORTED)
    ledger = _ledger(app)
    assert (ledger.total_spent, ledger.reserved, ledger.held_by_job) == (billed, 0, job_id)
    body = client.get(f"/api/jobs/{job_id}").get_json()
    assert (body["usage_over_bound"], body["cost"]) == (True, float(billed))
    assert _over_bound_count("gpt-3.5-turbo") == counted + 1
    (alert,) = [a for a in fired if isinstance(a, alerts.UsageOverBound)]
    assert (alert.job_id, alert.scopes, alert.cost, alert.reserved) == (job_id, ("global",), billed, bound)
    assert alert.as_payload()["event"] == "usage_over_bound"

    # Nothing more is reserved in the scope, on either API, until an operator clears the hold.
    refused = client.post("/api/prompt", json={"prompt": "hi", "wait": False})
    assert refused.status_code == 402
    error = refused.get_json()["error"]
    assert (error["code"], error["details"]["reason"], error["details"]["job_id"]) == (
        "budget_exceeded", "usage_over_bound", job_id,
    )  # fmt: skip
    chat = client.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": "x"}]})
    assert (chat.status_code, chat.get_json()["error"]["code"]) == (402, "budget_exceeded")
    assert "billed more than its bound" in chat.get_json()["error"]["message"]
    assert client.post("/api/batch", json={"prompts": ["hi"]}).status_code == 402
    assert client.get("/api/budget").get_json()["held_by_job"] == job_id
    assert _ledger(app).reserved == 0

    cleared = client.delete("/api/budget/hold")
    assert (cleared.status_code, cleared.get_json()["held_by_job"]) == (200, None)
    monkeypatch.setattr("worker.tasks.run_job.apply_async", lambda args, **_: None)
    assert client.post("/api/prompt", json={"prompt": "hi", "wait": False}).status_code == 202


def test_a_bill_within_the_bound_holds_nothing(any_app: Flask, catalog: Catalog, monkeypatch) -> None:
    """Billed exactly its bound: nothing flagged or held."""
    fake = FakeLLMClient()
    limit = call_bound.call_bound(prompt=PROMPT, max_tokens=100)
    fake.script("gpt-3.5-turbo", ok(prompt_tokens=limit.prompt_tokens, completion_tokens=limit.completion_tokens))
    workers, job_ids = run_jobs_soon(monkeypatch, worker_deps(any_app, catalog, fake))
    client = any_app.test_client()
    client.post("/api/prompt", json={"prompt": PROMPT, "model": "gpt-3.5-turbo", "max_tokens": 100, "wait": False})
    for worker in workers:
        worker.join()
    job = _job(any_app, job_ids[0])
    billed = limit.cost(catalog.get_model("gpt-3.5-turbo"))
    assert (job.status.value, job.usage_over_bound, job.cost) == ("succeeded", False, billed)
    assert _ledger(any_app).held_by_job is None
    assert client.get(f"/api/jobs/{job.id}").get_json()["usage_over_bound"] is False


def test_a_keyed_job_over_its_bound_holds_its_key_and_the_global_scope(
    any_keyed_app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound, not the tenant, was wrong: every tenant's requests stop until an admin clears both holds."""
    from shared.ledger import api_keys

    app, client = any_keyed_app, any_keyed_app.test_client()
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        tenant_row, tenant = api_keys.create(session, name="tenant", monthly_budget=Decimal(5))
        _, other = api_keys.create(session, name="other")
        _, admin = api_keys.create(session, name="ops", is_admin=True)
        tenant_scope = f"key:{tenant_row.id}"
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", ok(prompt_tokens=OVER_REPORTED, completion_tokens=24))
    workers, job_ids = run_jobs_soon(monkeypatch, worker_deps(app, catalog, fake))
    as_tenant, as_other, as_admin = ({"Authorization": f"Bearer {key}"} for key in (tenant, other, admin))
    item = {"prompt": PROMPT, "model": "gpt-3.5-turbo", "wait": False}
    assert client.post("/api/prompt", json=item, headers=as_tenant).status_code == 202
    for worker in workers:
        worker.join()
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        held = dict(session.execute(select(MonthlyBudget.scope, MonthlyBudget.held_by_job)).all())
    assert held == {"global": job_ids[0], tenant_scope: job_ids[0]}
    for headers in (as_tenant, as_other):
        refused = client.post("/api/prompt", json={"prompt": "hi", "wait": False}, headers=headers)
        assert (refused.status_code, refused.get_json()["error"]["details"]["reason"]) == (402, "usage_over_bound")
    assert client.get("/api/budget", headers=as_tenant).get_json()["held_by_job"] == job_ids[0]
    assert client.delete("/api/budget/hold", headers=as_tenant).status_code == 403
    assert client.delete("/api/budget/hold", headers=as_admin).status_code == 200
    assert client.post("/api/prompt", json=item, headers=as_other).status_code == 202
    assert client.post("/api/prompt", json=item, headers=as_tenant).status_code == 402
    cleared = client.delete(f"/api/budget/hold?scope={tenant_scope}", headers=as_admin).get_json()
    assert (cleared["scope"], cleared["monthly_limit"], cleared["held_by_job"]) == (tenant_scope, 5.0, None)
    assert client.post("/api/prompt", json=item, headers=as_tenant).status_code == 202
    for worker in workers:
        worker.join()


def test_only_an_admin_may_clear_a_hold(keyed_app: Flask) -> None:
    from shared.ledger import api_keys

    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        _, plain = api_keys.create(session, name="tenant")
        _, admin = api_keys.create(session, name="ops", is_admin=True)
    client = keyed_app.test_client()
    refused = client.delete("/api/budget/hold", headers={"Authorization": f"Bearer {plain}"})
    assert refused.status_code == 403
    allowed = client.delete("/api/budget/hold?scope=key:1", headers={"Authorization": f"Bearer {admin}"})
    assert (allowed.status_code, allowed.get_json()["scope"]) == (200, "key:1")
    unknown = client.delete("/api/budget/hold?scope=key:99999999999", headers={"Authorization": f"Bearer {admin}"})
    assert unknown.status_code == 400


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer().start()
    yield server
    server.stop()


# As many turns as a chat may hold: all empty but the last.
TURNS = schemas.MAX_CHAT_MESSAGES


@pytest.mark.parametrize("limit", [Decimal("0.05"), Decimal(20)])
def test_many_empty_messages_reserve_what_the_simulator_bills(
    tmp_path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, sim: SimServer, limit: Decimal
) -> None:
    """511 empty turns and "hi" to gpt-4: refused under a $0.05 limit (the simulator bills $0.06 of prompt for
    them, which a bound of the joined text, $0.02, let through); under a larger one, the reservation covers what
    the simulator billed, the job's exact cost."""
    messages = [{"role": "user", "content": ""}] * (TURNS - 1) + [{"role": "user", "content": "hi"}]
    chat = {"model": "gpt-4", "messages": messages, "max_tokens": 16}
    with _app(f"sqlite:///{tmp_path}/router.db", monthly_budget_limit=limit, openai_base_url=sim.base_url) as app:
        publisher = redis.Redis.from_url(UNIT_REDIS_URL)
        deps = worker_deps(
            app, catalog, OpenAIChatClient(app.extensions["settings"]),
            on_answered=lambda job_id, body: completion_channel.publish_job_done(publisher, job_id, body),
        )  # fmt: skip
        workers, job_ids = run_jobs_soon(monkeypatch, deps)
        response = app.test_client().post("/v1/chat/completions", json=chat)
        for worker in workers:
            worker.join()
        job = _job(app, job_ids[0]) if job_ids else None
        spent = _ledger(app).total_spent if job_ids else None
    if limit < 1:
        assert response.status_code == 402, response.get_json()
        assert job_ids == [] and sim.stats()["gpt-4"]["calls"] == 0
        return
    assert response.status_code == 200, response.get_json()
    billed = sim.stats()["gpt-4"]
    assert billed["prompt_tokens"] == TURNS * 4 + 1 + 3
    cost = catalog.get_model("gpt-4").cost(billed["prompt_tokens"], billed["completion_tokens"])
    assert job is not None and job.cost == cost <= job.reserved_cost
    assert (job.usage_over_bound, spent) == (False, cost)
