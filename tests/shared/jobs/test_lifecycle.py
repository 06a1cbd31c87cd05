"""Accepting and running jobs: routing, retries, escalation, settlement exactly once."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.errors import BudgetExceeded
from shared.errors import PermanentLLMError
from shared.errors import RoutingError
from shared.errors import TransientLLMError
from shared.jobs import dispatch
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.jobs.views import job_body
from shared.ledger import budget
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.store.types import utcnow
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

EASY = "What is the capital of France?"
HEDGE = "I'm not sure, maybe Paris."


@pytest.fixture
def fake() -> FakeLLMClient:
    return FakeLLMClient()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def deps(sessions, catalog, settings, fake, sleeps) -> runs.RunDeps:
    finished: list[str] = []
    return runs.RunDeps(
        sessions=sessions,
        catalog=catalog,
        settings=settings,
        client=fake,
        on_finished=finished.append,
        sleep=sleeps.append,
    )


def _submit(sessions: sessionmaker[Session], catalog: Catalog, settings: Settings, **fields) -> str:
    with sessions.begin() as session:
        return lifecycle.create(session, request=lifecycle.JobRequest(**fields), catalog=catalog, settings=settings).id


def _job(sessions: sessionmaker[Session], job_id: str) -> RequestLog:
    with sessions() as session:
        job = session.get(RequestLog, job_id)
        assert job is not None
        job.attempts  # noqa: B018  (load before the session closes)
        return job


def _ledger(sessions: sessionmaker[Session]) -> MonthlyBudget:
    with sessions() as session:
        return session.scalars(select(MonthlyBudget)).one()


def test_easy_prompt_goes_to_the_cheap_model_and_settles_its_cost(deps, sessions, catalog, settings, fake) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    job = _job(sessions, job_id)
    expected = catalog.get_model("gpt-3.5-turbo").cost(12, 24)
    assert (job.model_used, job.tier, job.difficulty_level) == ("gpt-3.5-turbo", "cheap", "easy")
    assert (job.cost, job.tokens_used, job.retry_count, job.escalated) == (expected, 36, 0, False)
    ledger = _ledger(sessions)
    assert (ledger.total_spent, ledger.reserved) == (expected, Decimal(0))


def test_finished_job_is_announced(deps, sessions, catalog, settings) -> None:
    announced: list[str] = []
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    runs.run(job_id, deps=runs.RunDeps(**{**deps.__dict__, "on_finished": announced.append}))
    assert announced == [job_id]


def test_a_finished_job_is_announced_with_the_body_a_read_of_it_shows(deps, sessions, catalog, settings, fake) -> None:
    fake.script(
        "gpt-3.5-turbo", TransientLLMError("503", status_code=503, details={"error_class": "server_error"}), ok()
    )
    announced: list[tuple[str, dict]] = []
    job_id = _submit(sessions, catalog, settings, prompt=EASY, metadata={"team": "a"})
    answered = runs.RunDeps(**{**deps.__dict__, "on_answered": lambda *announcement: announced.append(announcement)})
    runs.run(job_id, deps=answered)
    with sessions() as session:
        read = job_body(lifecycle.get_or_raise(session, job_id=job_id))
    assert announced == [(job_id, read)]
    assert [attempt["outcome"] for attempt in read["attempts"]] == ["error", "ok"]


def test_transient_errors_are_retried_honouring_retry_after(deps, sessions, catalog, settings, fake, sleeps) -> None:
    fake.script(
        "gpt-3.5-turbo",
        TransientLLMError("429", status_code=429, retry_after_s=2.0, details={"error_class": "rate_limited"}),
        TransientLLMError("429", status_code=429, retry_after_s=600.0, details={"error_class": "rate_limited"}),
        ok(),
    )
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    job = _job(sessions, job_id)
    assert job.retry_count == 2
    assert [a.outcome for a in job.attempts] == ["error", "error", "ok"]
    assert [a.status_code for a in job.attempts] == [429, 429, None]
    assert sleeps == [2.0, settings.upstream_retry_after_cap_s]


def test_permanent_error_fails_without_retry_and_spends_nothing(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-4-turbo", PermanentLLMError("bad", status_code=400, details={"error_class": "rejected"}))
    job_id = _submit(sessions, catalog, settings, prompt=EASY, model="gpt-4-turbo")
    assert runs.run(job_id, deps=deps) is JobStatus.FAILED
    job = _job(sessions, job_id)
    assert (job.error_code, job.retry_count, len(job.attempts), job.cost) == ("upstream_rejected", 0, 1, 0)
    ledger = _ledger(sessions)
    assert (ledger.total_spent, ledger.reserved) == (Decimal(0), Decimal(0))


def test_exhausted_retries_fail_the_job(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-4-turbo", *[TransientLLMError("500", status_code=500)] * settings.upstream_max_attempts)
    job_id = _submit(sessions, catalog, settings, prompt=EASY, model="gpt-4-turbo")
    assert runs.run(job_id, deps=deps) is JobStatus.FAILED
    job = _job(sessions, job_id)
    assert (job.error_code, job.retry_count) == ("upstream_unavailable", settings.upstream_max_attempts - 1)


def test_hedging_answer_escalates_one_tier_and_sums_both_costs(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", ok(HEDGE, completion_tokens=6))
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    job = _job(sessions, job_id)
    assert fake.calls == ["gpt-3.5-turbo", "gpt-4"]
    assert (job.escalated, job.model_used, job.tier) == (True, "gpt-4", "mid")
    assert "hedging" in (job.escalation_reason or "")
    assert job.cost == catalog.get_model("gpt-3.5-turbo").cost(12, 6) + catalog.get_model("gpt-4").cost(12, 24)
    assert [a.purpose for a in job.attempts] == ["primary", "escalation"]
    assert job.retry_count == 0


CUT = "Hello there, it is a fine day to say"  # what a 16-token max_tokens leaves of a longer answer


@pytest.fixture
def any_database(sessions: sessionmaker[Session], settings: Settings) -> tuple[sessionmaker[Session], Settings]:
    """Sessions and settings on a fresh SQLite file, or on the PostgreSQL test database."""
    return sessions, settings


@pytest.mark.parametrize("wording", [CUT, HEDGE])
def test_an_answer_cut_at_max_tokens_is_reported_and_not_escalated(any_database, catalog, fake, wording) -> None:
    """Every tier gets the same max_tokens: re-asking a stronger one only pays more for another cut answer."""
    sessions, settings = any_database
    fake.script("gpt-3.5-turbo", ok(wording, finish_reason="length", prompt_tokens=14, completion_tokens=16))
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)
    job_id = _submit(sessions, catalog, settings, prompt="Say hello in five words.", max_tokens=16)

    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED

    job = _job(sessions, job_id)
    assert fake.calls == ["gpt-3.5-turbo"]
    assert (job.truncated, job.escalated, job.finish_reason, job.response) == (True, False, "length", wording)
    assert job.cost == catalog.get_model("gpt-3.5-turbo").cost(14, 16)
    assert _ledger(sessions).total_spent == job.cost
    assert job_body(job)["truncated"] is True


def test_a_whole_answer_is_not_truncated(deps, sessions, catalog, settings, fake) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    runs.run(job_id, deps=deps)
    job = _job(sessions, job_id)
    assert (job.truncated, job.finish_reason, job_body(job)["truncated"]) == (False, "stop", False)


def test_a_filtered_answer_still_escalates(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", ok(finish_reason="content_filter"))
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    runs.run(job_id, deps=deps)
    job = _job(sessions, job_id)
    assert (fake.calls, job.escalated, job.truncated) == (["gpt-3.5-turbo", "gpt-4"], True, False)


def test_failed_escalation_keeps_the_first_answer(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", ok(HEDGE))
    fake.script("gpt-4", PermanentLLMError("no", status_code=400))
    fake.script("gpt-4-turbo", PermanentLLMError("no", status_code=400))
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    job = _job(sessions, job_id)
    assert (job.response, job.model_used, job.escalated) == (HEDGE, "gpt-3.5-turbo", True)


def test_forced_tier_never_escalates(deps, sessions, catalog, settings, fake) -> None:
    fake.script("gpt-4", ok(HEDGE))
    job_id = _submit(sessions, catalog, settings, prompt=EASY, tier="mid")
    runs.run(job_id, deps=deps)
    job = _job(sessions, job_id)
    assert (fake.calls, job.escalated, job.tier) == (["gpt-4"], False, "mid")


def test_forced_model_is_used_whatever_the_difficulty(deps, sessions, catalog, settings, fake) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY, model="gpt-4-turbo")
    runs.run(job_id, deps=deps)
    assert _job(sessions, job_id).model_used == "gpt-4-turbo"


def test_escalation_can_be_switched_off(sessions, catalog, database_url, fake) -> None:
    settings = make_test_settings(database_url, escalation_enabled=False)
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)
    fake.script("gpt-3.5-turbo", ok(HEDGE))
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    runs.run(job_id, deps=deps)
    assert fake.calls == ["gpt-3.5-turbo"]


def test_a_redelivered_job_is_not_run_or_charged_twice(deps, sessions, catalog, settings, fake) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    runs.run(job_id, deps=deps)
    spent = _ledger(sessions).total_spent
    assert runs.run(job_id, deps=deps) is None
    assert fake.calls == ["gpt-3.5-turbo"]
    assert _ledger(sessions).total_spent == spent


def test_a_job_running_elsewhere_is_busy(deps, sessions, catalog, settings, fake) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert isinstance(runs._claim(job_id, deps=deps), runs.Claim)
    assert isinstance(runs.run(job_id, deps=deps), runs.Busy)
    assert fake.calls == []


def test_an_expired_lease_is_taken_over_and_the_old_run_cannot_settle(deps, sessions, catalog, settings) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    stale = runs._claim(job_id, deps=deps)
    assert isinstance(stale, runs.Claim)
    with sessions.begin() as session:
        session.execute(
            update(RequestLog).where(RequestLog.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    spent = _ledger(sessions).total_spent
    stale_outcome = dispatch.answer(
        dispatch.Job(prompt=EASY, max_tokens=1000, preference="balanced", model=None, tier=None, max_tier=None,
                      reserved_cost=stale.reserved_cost, deadline_s=60),
        using=deps.answerer,
    )  # fmt: skip
    assert runs._finish(stale, stale_outcome, deps=deps) is None
    ledger = _ledger(sessions)
    assert (ledger.total_spent, ledger.reserved) == (spent, Decimal(0))
    # The run that took over records the lapsed run as a lost attempt, then its own call.
    assert [(a.outcome, a.error_class) for a in _job(sessions, job_id).attempts] == [
        ("error", "worker_lost"), ("ok", None)
    ]  # fmt: skip


def test_unknown_model_is_refused_before_anything_is_reserved(sessions, catalog, settings) -> None:
    with pytest.raises(RoutingError), sessions.begin() as session:
        lifecycle.create(
            session, request=lifecycle.JobRequest(prompt=EASY, model="gpt-9"), catalog=catalog, settings=settings
        )
    with sessions() as session:
        assert session.scalars(select(MonthlyBudget)).all() == []


def test_no_job_is_recorded_when_the_budget_is_exhausted(sessions, catalog, database_url) -> None:
    settings = make_test_settings(database_url, monthly_budget_limit=Decimal("0.001"))
    with pytest.raises(BudgetExceeded), sessions.begin() as session:
        lifecycle.create(session, request=lifecycle.JobRequest(prompt=EASY), catalog=catalog, settings=settings)
    with sessions() as session:
        assert session.scalars(select(RequestLog)).all() == []


def test_withdraw_releases_an_unqueued_job(sessions, catalog, settings) -> None:
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    with sessions.begin() as session:
        lifecycle.withdraw(session, job_id=job_id)
    ledger = _ledger(sessions)
    assert (ledger.reserved, ledger.request_count) == (Decimal(0), 0)
    with sessions() as session:
        assert session.get(RequestLog, job_id) is None


def test_true_cost_never_exceeds_the_reservation(deps, sessions, catalog, settings, fake) -> None:
    prompt = "x" * 50
    fake.script("gpt-3.5-turbo", ok(HEDGE, prompt_tokens=66, completion_tokens=100))
    fake.script("gpt-4", ok(prompt_tokens=66, completion_tokens=100))
    job_id = _submit(sessions, catalog, settings, prompt=prompt, max_tokens=100)
    runs.run(job_id, deps=deps)
    job = _job(sessions, job_id)
    assert job.escalated
    assert job.cost <= job.reserved_cost
    assert budget.Period(job.budget_year, job.budget_month) == budget.Period.of(utcnow())


def test_the_answer_in_hand_survives_a_database_outage_at_finish(deps, sessions, catalog, settings, fake, monkeypatch):
    from sqlalchemy.exc import OperationalError

    real_finish = runs._finish
    failures = iter([OperationalError("UPDATE", {}, Exception("server closed the connection"))] * 2)

    def flaky_finish(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(runs, "_finish", flaky_finish)
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert fake.calls == ["gpt-3.5-turbo"]  # the upstream was not asked again
    assert _ledger(sessions).total_spent == _job(sessions, job_id).cost


def test_a_deadline_never_outlasts_the_lease(sessions, catalog, settings) -> None:
    with sessions.begin() as session:
        job = lifecycle.create(session, request=lifecycle.JobRequest(prompt=EASY, deadline_s=600), catalog=catalog,
                          settings=settings)  # fmt: skip
    limits = settings.time_limits
    assert job.deadline_s == limits.max_deadline_s < 600
    assert job.deadline_s + limits.finish_s < limits.soft_s < limits.hard_s < limits.lease_s


def test_a_job_can_ask_for_the_learned_estimator(deps, sessions, catalog, settings) -> None:
    from shared.routing import difficulty

    prompt = "Solve step by step: a train leaves at 3 pm at 60 mph; another at 4 pm at 80 mph. When do they meet?"
    job_id = _submit(sessions, catalog, settings, prompt=prompt, difficulty_estimator="learned")
    runs.run(job_id, deps=deps)
    job = _job(sessions, job_id)
    learned = difficulty.estimate_difficulty(prompt, estimator="learned").score
    assert job.difficulty_estimator == "learned"
    assert job.difficulty_score == pytest.approx(learned, abs=1e-4)
    assert job.difficulty_score != pytest.approx(difficulty.estimate_difficulty(prompt).score, abs=1e-4)


def test_the_estimator_setting_is_the_default(sessions, catalog, database_url) -> None:
    settings = make_test_settings(database_url, difficulty_estimator="learned")
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    assert _job(sessions, job_id).difficulty_estimator == "learned"


def test_a_run_is_one_statement_per_step_and_no_transaction_on_postgresql(postgres_engine, catalog) -> None:
    """Claiming, noting the call in flight and finishing each commit on the server as they end: no BEGIN, no
    COMMIT round trips."""
    settings = make_test_settings(postgres_engine.url.render_as_string(hide_password=False))
    sessions = make_sessionmaker(postgres_engine)
    fake = FakeLLMClient()
    job_id = _submit(sessions, catalog, settings, prompt=EASY)
    statements: list[str] = []
    commits: list[object] = []
    event.listen(postgres_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    event.listen(postgres_engine, "commit", commits.append)

    assert runs.run(job_id, deps=runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake)) is (
        JobStatus.SUCCEEDED
    )

    claim, note, finish = statements
    assert claim.startswith("UPDATE request_logs") and note.startswith("UPDATE request_logs")
    assert finish.startswith("WITH ended AS")
    assert commits == []
    assert _job(sessions, job_id).status is JobStatus.SUCCEEDED and _ledger(sessions).reserved == 0
