"""A key's allowed models bind every model its jobs call: fallbacks, escalation, routing and the reservation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.errors import ModelNotAllowed
from shared.errors import TransientLLMError
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.ledger import budget
from shared.ledger import call_bound
from shared.ledger import model_access
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.store.types import utcnow
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok
from tests.support.prompts import EASY
from tests.support.prompts import HARD

DOWN = TransientLLMError("503", status_code=503, details={"error_class": "server_error"})
HEDGE = "I'm not sure, maybe Paris."
CHEAP = frozenset({"gpt-3.5-turbo"})


@pytest.fixture
def fake() -> FakeLLMClient:
    return FakeLLMClient()


@pytest.fixture
def deps(sessions, catalog, settings, fake) -> runs.RunDeps:
    return runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)


def _submit(sessions: sessionmaker[Session], catalog: Catalog, settings: Settings, **fields) -> str:
    with sessions.begin() as session:
        return lifecycle.create(session, request=lifecycle.JobRequest(**fields), catalog=catalog, settings=settings).id


def _job(sessions: sessionmaker[Session], job_id: str) -> RequestLog:
    with sessions() as session:
        job = session.get(RequestLog, job_id)
        assert job is not None
        job.attempts  # noqa: B018  (load before the session closes)
        return job


def _one_call(catalog: Catalog, model: str, *, prompt: str = EASY, max_tokens: int = 1000) -> Decimal:
    return call_bound.call_bound(prompt=prompt, max_tokens=max_tokens).cost(catalog.get_model(model))


def test_a_key_limited_to_the_cheap_model_is_not_answered_by_its_fallback(
    deps, sessions, catalog, settings, fake
) -> None:
    fake.script("gpt-3.5-turbo", *[DOWN] * settings.upstream_max_attempts)
    job_id = _submit(sessions, catalog, settings, prompt=EASY, allowed_models=CHEAP)

    assert runs.run(job_id, deps=deps) is JobStatus.FAILED

    job = _job(sessions, job_id)
    assert fake.calls == ["gpt-3.5-turbo"] * settings.upstream_max_attempts
    assert [(a.purpose, a.model, a.outcome) for a in job.attempts] == [
        ("primary", "gpt-3.5-turbo", "error")
    ] * settings.upstream_max_attempts
    # The upstream's own error, as for any job whose models all failed.
    assert (job.error_code, job.model_used, job.cost) == ("upstream_unavailable", "gpt-3.5-turbo", Decimal(0))
    with sessions() as session:
        assert session.scalars(select(MonthlyBudget.reserved)).one() == Decimal(0)


def test_an_unrestricted_job_still_falls_back(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", *[DOWN] * settings.upstream_max_attempts)
    job_id = _submit(sessions, catalog, settings, prompt=EASY)

    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED

    assert fake.calls == ["gpt-3.5-turbo"] * settings.upstream_max_attempts + ["gpt-4"]
    assert _job(sessions, job_id).model_used == "gpt-4"


def test_a_fallback_the_key_allows_still_answers(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", *[DOWN] * settings.upstream_max_attempts)
    allowed = frozenset({"gpt-3.5-turbo", "gpt-4"})
    job_id = _submit(sessions, catalog, settings, prompt=EASY, model="gpt-3.5-turbo", allowed_models=allowed)

    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED

    job = _job(sessions, job_id)
    assert (job.model_used, [a.purpose for a in job.attempts][-1]) == ("gpt-4", "fallback")


def test_escalation_is_skipped_when_no_stronger_model_is_allowed(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", ok(HEDGE))
    job_id = _submit(sessions, catalog, settings, prompt=EASY, allowed_models=CHEAP)

    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED

    job = _job(sessions, job_id)
    assert fake.calls == ["gpt-3.5-turbo"]
    assert (job.escalated, job.model_used, job.response) == (False, "gpt-3.5-turbo", HEDGE)
    assert [a.purpose for a in job.attempts] == ["primary"]


def test_escalation_goes_to_the_next_stronger_tier_the_key_allows(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", ok(HEDGE))
    allowed = frozenset({"gpt-3.5-turbo", "gpt-4-turbo"})
    job_id = _submit(sessions, catalog, settings, prompt=EASY, allowed_models=allowed)

    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED

    job = _job(sessions, job_id)
    assert fake.calls == ["gpt-3.5-turbo", "gpt-4-turbo"]
    assert (job.escalated, job.model_used, job.tier) == (True, "gpt-4-turbo", "high")
    assert job.cost <= job.reserved_cost


def test_a_routed_hard_prompt_of_a_cheap_key_is_answered_by_its_model(deps, sessions, catalog, settings, fake) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=HARD, allowed_models=CHEAP)

    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED

    job = _job(sessions, job_id)
    assert (fake.calls, job.difficulty_level, job.model_used) == (["gpt-3.5-turbo"], "hard", "gpt-3.5-turbo")


def test_the_reservation_prices_only_the_allowed_models(catalog, settings) -> None:
    def bound(**fields) -> Decimal:
        return lifecycle.bound_for(lifecycle.JobRequest(prompt=EASY, **fields), catalog=catalog, settings=settings)

    cheap, mid, high = (_one_call(catalog, name) for name in ("gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"))
    # Unrestricted: the cheap tier's answer may come from its fallback, and the escalation from the tier above.
    assert bound() == max(mid, cheap) + max(mid, high)
    # Limited to the cheap model: one answer from it, nothing to escalate to.
    assert bound(allowed_models=CHEAP) == cheap < bound()
    # Still a bound of whatever the job may call: the cheap answer plus an escalation to the high tier.
    assert bound(allowed_models=frozenset({"gpt-3.5-turbo", "gpt-4-turbo"})) == cheap + high
    assert bound(model="gpt-3.5-turbo", allowed_models=frozenset({"gpt-3.5-turbo", "gpt-4"})) == mid


def test_a_narrowed_downgrade_steps_down_only_through_allowed_tiers(sessions, catalog, database_url) -> None:
    cheap = _one_call(catalog, "gpt-3.5-turbo")
    settings = make_test_settings(database_url, monthly_budget_limit=cheap)
    allowed = frozenset({"gpt-3.5-turbo", "gpt-4-turbo"})
    with sessions.begin() as session:
        accepted = lifecycle.create(
            session,
            request=lifecycle.JobRequest(prompt=EASY, on_budget_pressure="downgrade", allowed_models=allowed),
            catalog=catalog,
            settings=settings,
        )
    assert (accepted.max_tier, accepted.reserved_cost) == ("cheap", cheap)


def test_the_single_statement_accept_carries_the_allowed_models(postgres_engine, catalog) -> None:
    settings = make_test_settings(postgres_engine.url.render_as_string(hide_password=False))
    sessions = make_sessionmaker(postgres_engine)
    with sessions.begin() as session:
        budget.reserve(session, scope=budget.GLOBAL_SCOPE, period=budget.Period.of(utcnow()), amount=Decimal(0),
                       limit=settings.monthly_budget_limit, count=0)  # fmt: skip

    accepted = lifecycle.create_alone(
        postgres_engine, request=lifecycle.JobRequest(prompt=EASY, allowed_models=CHEAP), catalog=catalog,
        settings=settings,
    )  # fmt: skip

    assert accepted is not None and accepted.reserved_cost == _one_call(catalog, "gpt-3.5-turbo")
    with sessions() as session:
        assert session.get(RequestLog, accepted.id).allowed_models == ["gpt-3.5-turbo"]  # type: ignore[union-attr]
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", *[DOWN] * settings.upstream_max_attempts)
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)
    assert runs.run(accepted.id, deps=deps) is JobStatus.FAILED
    assert set(fake.calls) == {"gpt-3.5-turbo"}


def test_both_accept_forms_leave_an_unrestricted_job_unrestricted(sessions, catalog, settings) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert _job(sessions, job_id).allowed_models is None


@pytest.mark.parametrize(
    ("allowed", "model", "tier"),
    [(CHEAP, "gpt-4", None), (CHEAP, None, "mid"), (frozenset({"gpt-4"}), "gpt-3.5-turbo", "cheap")],
)
def test_a_request_forcing_what_the_key_may_not_use_is_refused(catalog, allowed, model, tier) -> None:
    with pytest.raises(ModelNotAllowed):
        model_access.check(catalog, allowed=allowed, model=model, tier=tier)


@pytest.mark.parametrize(("model", "tier"), [(None, None), (None, "cheap"), ("gpt-3.5-turbo", None)])
def test_a_request_within_the_keys_models_is_accepted(catalog, model, tier) -> None:
    model_access.check(catalog, allowed=CHEAP, model=model, tier=tier)


def test_a_routed_request_is_refused_when_no_allowed_model_is_left_in_the_catalog(catalog) -> None:
    with pytest.raises(ModelNotAllowed):
        model_access.check(catalog, allowed=frozenset({"retired-model"}), model=None, tier=None)
