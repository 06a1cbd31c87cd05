"""A model served by two deployments: a broken or throttled one is left out, and each attempt names its own."""

from __future__ import annotations

import dataclasses

import fakeredis
import pytest
from sqlalchemy import select

from shared.errors import TransientLLMError
from shared.jobs import dispatch
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.jobs.views import job_body
from shared.routing.catalog import Catalog
from shared.routing.catalog import Deployment
from shared.store.models import JobStatus
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.upstream.admission import Admission
from shared.upstream.admission import RateLimits
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.deployments import Balancer
from shared.upstream.llm_client import OpenAIChatClient
from tests.conftest import make_test_settings
from tests.support.fakes import ok
from tests.support.prompts import EASY
from tests.support.sim import running_sim

CHEAP = "gpt-3.5-turbo"
DOWN = TransientLLMError("503", status_code=503, details={"error_class": "server_error"})
RATE_LIMITED = TransientLLMError("429", status_code=429, details={"error_class": "rate_limited"})


class Upstreams:
    """An LLMClient that tells deployments apart: those in `failing` answer `failing[key]`, the rest answer."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.failing: dict[str, Exception] = {}

    def complete(self, *, model, prompt, max_tokens, timeout_s=None, **_):
        self.calls.append(model.upstream_key)
        if model.upstream_key in self.failing:
            raise self.failing[model.upstream_key]
        return ok()


def _deployed(catalog: Catalog, *deployments: Deployment) -> Catalog:
    models = tuple(dataclasses.replace(m, deployments=deployments) if m.name == CHEAP else m for m in catalog.models)
    return dataclasses.replace(catalog, models=models)


@pytest.fixture
def two(catalog: Catalog) -> Catalog:
    return _deployed(catalog, Deployment("a"), Deployment("b"))


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


@pytest.fixture
def breaker() -> CircuitBreaker:
    return CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=3, failure_rate=0.5, cooldown_s=60))


def _job(catalog: Catalog) -> dispatch.Job:
    return dispatch.Job(prompt=EASY, max_tokens=100, preference="balanced", model=None, tier=None, max_tier=None,
                        reserved_cost=catalog.get_model("gpt-4-turbo").cost(1000, 1000), deadline_s=30.0)  # fmt: skip


def _using(catalog, settings, client, **parts) -> dispatch.Answerer:
    # rng 0.5: equally busy deployments in the catalog's order, so the test knows which is tried first.
    parts.setdefault("balancer", Balancer(fakeredis.FakeRedis(), rng=lambda: 0.5))
    return dispatch.Answerer(catalog=catalog, settings=settings, client=client, sleep=lambda _: None, **parts)


def _served(outcome: dispatch.Outcome) -> list[tuple[str | None, str, str | None]]:
    return [(a.deployment, a.outcome, a.error_class) for _, a in outcome.attempts]


def test_an_open_circuit_sends_all_traffic_to_the_other_deployment(two, settings, upstreams, breaker) -> None:
    for _ in range(3):
        breaker.record_failure(breaker.allow(f"{CHEAP}@a"))
    using = _using(two, settings, upstreams, breaker=breaker)
    outcomes = [dispatch.answer(_job(two), using=using) for _ in range(5)]
    assert upstreams.calls == [f"{CHEAP}@b"] * 5
    assert all(_served(outcome) == [("b", "ok", None)] for outcome in outcomes)
    assert breaker.state(CHEAP) == breaker.state(f"{CHEAP}@b") == "closed"


def test_a_failing_deployment_opens_its_own_circuit_not_the_models(two, settings, upstreams, breaker) -> None:
    upstreams.failing[f"{CHEAP}@a"] = DOWN
    outcome = dispatch.answer(_job(two), using=_using(two, settings, upstreams, breaker=breaker))
    assert outcome.model.name == CHEAP and outcome.model.deployment == "b"
    assert _served(outcome)[-1] == ("b", "ok", None)
    assert breaker.state(f"{CHEAP}@a") == "open"
    assert breaker.state(f"{CHEAP}@b") == "closed"


def test_a_rate_limited_deployment_hands_its_calls_to_the_other(two, settings, upstreams) -> None:
    upstreams.failing[f"{CHEAP}@a"] = RATE_LIMITED
    using = _using(two, settings, upstreams, admission=Admission(fakeredis.FakeRedis()))
    first = dispatch.answer(_job(two), using=using)
    assert _served(first) == [("a", "error", "rate_limited"), ("a", "skipped", "rate_limited"), ("b", "ok", None)]
    assert first.completion is not None and first.error is None
    upstreams.calls.clear()
    # Admission keeps the throttled deployment out while it asked to be left alone: the next job goes to b at once.
    second = dispatch.answer(_job(two), using=using)
    assert upstreams.calls == [f"{CHEAP}@b"]
    assert _served(second) == [("b", "ok", None)]


def test_a_429_puts_its_deployment_after_the_other_until_its_retry_after_passes(two, settings, upstreams, clock):
    throttled = TransientLLMError("429", status_code=429, details={"error_class": "rate_limited"})
    throttled.rate_limits = RateLimits(retry_after_s=30)
    upstreams.failing[f"{CHEAP}@a"] = throttled
    using = _using(two, settings, upstreams, admission=Admission(fakeredis.FakeRedis(), clock=clock),
                   balancer=Balancer(fakeredis.FakeRedis(), clock=clock, rng=lambda: 0.5))  # fmt: skip
    dispatch.answer(_job(two), using=using)
    del upstreams.failing[f"{CHEAP}@a"]
    upstreams.calls.clear()
    # b is tried first, without a look at a: no skipped attempt, no call.
    assert _served(dispatch.answer(_job(two), using=using)) == [("b", "ok", None)]
    clock.now += 30
    # Its wait is over: a is back in rotation (first again, by the catalog's order with rng 0.5).
    assert _served(dispatch.answer(_job(two), using=using)) == [("a", "ok", None)]
    assert upstreams.calls == [f"{CHEAP}@b", f"{CHEAP}@a"]


def test_a_job_waiting_for_its_model_does_not_wait_for_a_busy_deployment(two, settings, upstreams) -> None:
    upstreams.failing[f"{CHEAP}@a"] = RATE_LIMITED
    using = _using(two, settings, upstreams, admission=Admission(fakeredis.FakeRedis()))
    job = dataclasses.replace(_job(two), on_rate_limit="wait")
    outcome = dispatch.answer(job, using=using)
    assert outcome.model.deployment == "b" and outcome.deferral is None


def test_a_model_without_deployments_keeps_its_circuit_under_its_name(catalog, settings, upstreams, breaker) -> None:
    upstreams.failing[CHEAP] = DOWN
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, upstreams, breaker=breaker))
    assert breaker.state(CHEAP) == "open"
    assert {a.deployment for _, a in outcome.attempts} == {None}


def test_the_attempt_records_the_deployment_that_served(two, sessions, settings, upstreams) -> None:
    upstreams.failing[f"{CHEAP}@a"] = DOWN
    deps = runs.RunDeps(sessions=sessions, catalog=two, settings=settings, client=upstreams, sleep=lambda _: None,
                        balancer=Balancer(fakeredis.FakeRedis(), rng=lambda: 0.5))  # fmt: skip
    with sessions.begin() as session:
        job_id = lifecycle.create(session, request=lifecycle.JobRequest(prompt=EASY), catalog=two, settings=settings).id
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    with sessions() as session:
        stored = session.scalars(select(RequestAttempt).order_by(RequestAttempt.seq)).all()
        assert [(a.model, a.deployment, a.outcome) for a in stored][-1] == (CHEAP, "b", "ok")
        assert {a.deployment for a in stored[:-1]} == {"a"}
        body = job_body(session.get(RequestLog, job_id))
    assert body["attempts"][-1]["deployment"] == "b"


def test_an_attempt_of_a_model_with_one_deployment_shows_as_before(sessions, catalog, settings, upstreams) -> None:
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=upstreams)
    with sessions.begin() as session:
        job_id = lifecycle.create(
            session, request=lifecycle.JobRequest(prompt=EASY), catalog=catalog, settings=settings
        ).id
    runs.run(job_id, deps=deps)
    with sessions() as session:
        assert session.scalars(select(RequestAttempt.deployment)).all() == [None]
        assert "deployment" not in job_body(session.get(RequestLog, job_id))["attempts"][0]


def test_two_simulators_behind_one_model_over_http(catalog, tmp_path, breaker) -> None:
    """Through the real client: deployment a's server is down, so b's server answers, and the attempts say so."""
    with running_sim() as down, running_sim() as up:
        down.configure(fail_first="500:1000")
        two = _deployed(catalog, Deployment("a", base_url=down.base_url), Deployment("b", base_url=up.base_url))
        settings = make_test_settings(f"sqlite:///{tmp_path}/router.db")
        client = OpenAIChatClient(settings)
        try:
            outcome = dispatch.answer(_job(two), using=_using(two, settings, client, breaker=breaker))
        finally:
            client.close()
        served = {name: stats["calls"] for name, stats in up.json("GET", "/sim/stats")["models"].items()}
    assert outcome.completion is not None
    assert [a.deployment for _, a in outcome.attempts] == ["a"] * settings.upstream_max_attempts + ["b"]
    assert served[CHEAP] == 1
