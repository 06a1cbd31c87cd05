"""Jobs answered by a hostile upstream, through the web tier, a stand-in worker and the real OpenAIChatClient.

Usage that cannot be true is never recorded as given: the call is charged at its bound, the job flagged
`usage_invalid`, counted, logged and alerted. An answer that is not a chat completion ends its attempt
`upstream_bad_response`, charged at its bound. Either way the job ends once, with its cost, on SQLite and
PostgreSQL alike; a failure of the metrics or alerts after the commit changes none of that.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import redis
from flask import Flask
from prometheus_client import REGISTRY
from sqlalchemy import select

from shared.ledger import alerts
from shared.ledger import call_bound
from shared.observability import job_events
from shared.observability import metrics
from shared.routing.catalog import Catalog
from shared.store.base import Base
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.upstream.llm_client import OpenAIChatClient
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import make_test_settings
from tests.conftest import run_jobs_soon
from tests.conftest import worker_deps
from tests.support.hostile import HostileUpstream
from tests.support.hostile import running_hostile

CHEAP = "gpt-3.5-turbo"
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with running_hostile(interval_s=0.2) as server:
        yield server


@pytest.fixture
def app(database_url: str, hostile: HostileUpstream) -> Iterator[Flask]:
    from web.app import create_app

    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()
    app = create_app(make_test_settings(database_url, openai_base_url=hostile.base_url))
    app.config["TESTING"] = True
    Base.metadata.create_all(app.extensions["db_engine"])
    yield app
    app.extensions["db_engine"].dispose()


def _run(app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, prompt: str, **hooks: object) -> RequestLog:
    client = OpenAIChatClient(app.extensions["settings"])
    try:
        workers, job_ids = run_jobs_soon(monkeypatch, worker_deps(app, catalog, client, **hooks))
        response = app.test_client().post(
            "/api/prompt", json={"prompt": prompt, "model": CHEAP, "max_tokens": MAX_TOKENS, "wait": False}
        )
        assert response.status_code == 202, response.get_json()
        for worker in workers:
            worker.join()
    finally:
        client.close()
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        job = session.get(RequestLog, job_ids[0])
        assert job is not None
        job.attempts  # noqa: B018 (loaded while the session is open)
        return job


def _spent(app: Flask) -> Decimal:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return session.scalars(select(MonthlyBudget.total_spent)).one()


def _invalid_count() -> float:
    return REGISTRY.get_sample_value("model_router_usage_invalid_total", {"model": CHEAP}) or 0.0


@pytest.mark.parametrize("mode", ["negative_usage", "huge_usage", "over_context", "no_usage"])
def test_usage_that_cannot_be_true_is_charged_at_the_bound_flagged_counted_and_alerted(
    app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    prompt = f"{mode} What is the capital of France?"
    fired: list[alerts.Announcement] = []
    counted = _invalid_count()
    job = _run(app, catalog, monkeypatch, prompt, on_alert=fired.append)

    bound = call_bound.call_bound(prompt=prompt, max_tokens=MAX_TOKENS).cost(catalog.get_model(CHEAP))
    assert (job.status.value, job.run_count, job.usage_invalid, job.usage_over_bound) == ("succeeded", 1, True, False)
    assert job.response.startswith("Paris")
    assert job.cost == job.unconfirmed_cost == bound > 0
    assert _spent(app) == bound  # the ledger, never lowered nor crashed by the reported usage
    assert app.test_client().get(f"/api/jobs/{job.id}").get_json()["usage_invalid"] is True
    assert _invalid_count() == counted + 1
    (alert,) = [a for a in fired if isinstance(a, alerts.UsageInvalid)]
    assert (alert.job_id, alert.models, alert.charged) == (job.id, (CHEAP,), bound)
    assert alert.as_payload()["event"] == "usage_invalid"


def test_valid_usage_leaves_the_job_unflagged(app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _run(app, catalog, monkeypatch, "ok hi")
    assert (job.status.value, job.usage_invalid) == ("succeeded", False)
    assert (job.prompt_tokens, job.completion_tokens) == (12, 7)
    assert job.cost == catalog.get_model(CHEAP).cost(12, 7) == _spent(app)


@pytest.mark.parametrize("mode", ["non_string_content", "missing_choices", "non_json", "bad_finish_reason"])
def test_an_answer_that_is_not_a_chat_completion_fails_the_job_once_charged_at_each_calls_bound(
    app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, hostile: HostileUpstream, mode: str
) -> None:
    prompt = f"{mode} What is the capital of France?"
    before = hostile.calls_in(mode)
    job = _run(app, catalog, monkeypatch, prompt)
    call = call_bound.call_bound(prompt=prompt, max_tokens=MAX_TOKENS)
    called = [attempt for attempt in job.attempts if attempt.error_class == "bad_response"]
    # Not retried on a model (another bound each), fallen back from while the reservation covers the next.
    assert [attempt.model for attempt in called] == list(dict.fromkeys(attempt.model for attempt in called))
    assert len(called) == hostile.calls_in(mode) - before >= 1
    assert all(attempt.cost == call.cost(catalog.get_model(attempt.model)) for attempt in called)
    assert (job.status.value, job.error_code, job.run_count) == ("failed", "upstream_bad_response", 1)
    assert job.cost == job.unconfirmed_cost == sum(attempt.cost for attempt in called) == _spent(app)
    assert job.cost <= job.reserved_cost


def test_events_metrics_and_alerts_that_fail_leave_the_job_recorded_once(
    app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("broken")

    monkeypatch.setattr(job_events, "started", broken)
    monkeypatch.setattr(metrics, "record_usage_invalid", broken)
    monkeypatch.setattr(metrics, "record_attempts", broken)
    finished: list[str] = []
    job = _run(
        app, catalog, monkeypatch, "negative_usage hi", on_alert=broken, on_callback=broken,
        on_finished=finished.append,
    )  # fmt: skip
    assert (job.status.value, job.run_count, job.usage_invalid, job.settled) == ("succeeded", 1, True, True)
    assert finished == [job.id]
