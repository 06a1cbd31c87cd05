"""Accepting and finishing as single self-committing statements on PostgreSQL: all of it or none of it."""

from __future__ import annotations

import threading
from decimal import Decimal

from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH
from sqlalchemy import Engine
from sqlalchemy import event
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.errors import TransientLLMError
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.jobs import views
from shared.ledger import api_keys
from shared.ledger import budget
from shared.routing.catalog import Catalog
from shared.store.models import BudgetAlert
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.store.types import utcnow
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

PROMPT = "What is the capital of France?"


def _settings(engine: Engine, **overrides: object) -> Settings:
    return make_test_settings(engine.url.render_as_string(hide_password=False), **overrides)


def _open_months(sessions: sessionmaker[Session], limits: list[budget.ScopeLimits]) -> None:
    """Create this month's ledger rows (the one-statement path leaves a month's first request to create())."""
    with sessions.begin() as session:
        for scope in limits:
            budget.reserve(session, scope=scope.scope, period=budget.Period.of(utcnow()), amount=Decimal(0),
                           limit=scope.monthly,
                           count=0)  # fmt: skip


def _ledgers(sessions: sessionmaker[Session]) -> dict[str, tuple[Decimal, Decimal, int]]:
    with sessions() as session:
        rows = session.scalars(select(MonthlyBudget).execution_options(populate_existing=True))
        return {row.scope: (row.total_spent, row.reserved, row.request_count) for row in rows}


def _key(sessions: sessionmaker[Session], monthly_budget: Decimal | None) -> lifecycle.Requester:
    with sessions.begin() as session:
        row, _ = api_keys.create(session, name="caller", monthly_budget=monthly_budget)
        return lifecycle.Requester(row.id, row.monthly_budget)


def _accept(sessions, catalog: Catalog, settings: Settings, requester=None, **fields) -> lifecycle.Accepted | None:
    return lifecycle.create_alone(
        sessions.kw["bind"],
        request=lifecycle.JobRequest(**fields),
        catalog=catalog,
        settings=settings,
        requester=requester,
    )


def test_a_job_is_written_and_reserved_in_every_scope_in_one_statement(postgres_engine, catalog) -> None:
    settings = _settings(postgres_engine, monthly_budget_limit=Decimal(10))
    sessions = make_sessionmaker(postgres_engine)
    requester = _key(sessions, Decimal(5))
    _open_months(sessions, lifecycle.limits_of(settings, requester))
    statements: list[str] = []
    event.listen(postgres_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    accepted = _accept(sessions, catalog, settings, requester, prompt=PROMPT, max_tokens=50)

    assert accepted is not None and len(statements) == 1
    with sessions() as session:
        job = session.get(RequestLog, accepted.id)
        assert job is not None
        assert (job.status, job.prompt, job.reserved_cost, job.api_key_id) == (
            JobStatus.QUEUED, PROMPT, accepted.reserved_cost, requester.api_key_id,
        )  # fmt: skip
        # The columns the statement does not name take their defaults, as with the ORM.
        assert (job.run_count, job.retry_count, job.escalated, job.settled) == (0, 0, False, False)
    held = (Decimal(0), accepted.reserved_cost, 1)
    assert _ledgers(sessions) == {budget.GLOBAL_SCOPE: held, budget.key_scope(requester.api_key_id): held}


def test_nothing_is_written_when_one_scope_cannot_cover_the_bound(postgres_engine, catalog) -> None:
    settings = _settings(postgres_engine, monthly_budget_limit=Decimal(10))
    sessions = make_sessionmaker(postgres_engine)
    requester = _key(sessions, Decimal("0.000001"))
    _open_months(sessions, lifecycle.limits_of(settings, requester))
    before = _ledgers(sessions)

    assert _accept(sessions, catalog, settings, requester, prompt=PROMPT, max_tokens=50) is None

    # The global scope had room, but reserving there alone would leak: neither scope moved.
    assert _ledgers(sessions) == before
    with sessions() as session:
        assert session.scalars(select(RequestLog)).all() == []
    # The transactional path then explains the refusal.
    with sessions() as session:
        try:
            lifecycle.create_and_commit(session, alone=True, request=lifecycle.JobRequest(prompt=PROMPT, max_tokens=50),
                                   catalog=catalog, settings=settings, requester=requester)  # fmt: skip
        except Exception as error:
            assert type(error).__name__ == "BudgetExceeded" and error.details["scope"].startswith("key:")
        else:
            raise AssertionError("accepted a job its key cannot pay for")


def test_a_month_without_a_ledger_row_is_left_to_the_transactional_path(postgres_engine, catalog) -> None:
    settings = _settings(postgres_engine)
    sessions = make_sessionmaker(postgres_engine)

    assert _accept(sessions, catalog, settings, prompt=PROMPT) is None
    with sessions() as session:
        accepted = lifecycle.create_and_commit(
            session, alone=True, request=lifecycle.JobRequest(prompt=PROMPT), catalog=catalog, settings=settings
        )
    assert _ledgers(sessions) == {budget.GLOBAL_SCOPE: (Decimal(0), accepted.reserved_cost, 1)}


def test_a_finish_records_the_outcome_its_attempts_and_settles_every_scope_at_once(postgres_engine, catalog) -> None:
    request = {"prompt": PROMPT, "max_tokens": 50, "tier": "cheap"}
    cost = catalog.get_model("gpt-3.5-turbo").cost(40, 45)
    # The key's budget is exactly the job's bound, and its alert threshold one its cost reaches.
    key_budget = lifecycle.bound_for(
        lifecycle.JobRequest(**request), catalog=catalog, settings=_settings(postgres_engine)
    )
    threshold = int(cost * 100 / key_budget)
    settings = _settings(postgres_engine, monthly_budget_limit=Decimal(10), alert_thresholds=[threshold])
    sessions = make_sessionmaker(postgres_engine)
    requester = _key(sessions, key_budget)
    _open_months(sessions, lifecycle.limits_of(settings, requester))
    accepted = _accept(sessions, catalog, settings, requester, **request)
    assert accepted is not None and threshold >= 1
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", TransientLLMError("503", status_code=503), ok("Paris.", prompt_tokens=40,
                                                                              completion_tokens=45))  # fmt: skip
    bodies: dict[str, dict] = {}
    fired: list = []
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None,
                        on_alert=fired.append, on_answered=bodies.__setitem__)  # fmt: skip
    statements: list[str] = []
    event.listen(postgres_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    assert runs.run(accepted.id, deps=deps) is JobStatus.SUCCEEDED

    with sessions() as session:
        job = session.get(RequestLog, accepted.id)
        assert job is not None and (job.status, job.response, job.cost, job.settled) == (
            JobStatus.SUCCEEDED, "Paris.", cost, True,
        )  # fmt: skip
        # The finish returned only what the body needs, yet the announced body is the one a read gives.
        assert bodies[accepted.id] == views.job_body(job)
        attempts = session.scalars(select(RequestAttempt).order_by(RequestAttempt.seq)).all()
        assert [(a.seq, a.outcome, a.cost) for a in attempts] == [(1, "error", 0), (2, "ok", cost)]
        assert all(a.started_at.tzinfo is not None and a.job_id == accepted.id for a in attempts)
        # The key's small budget crossed its threshold: the alert is recorded, by the same statement.
        alerts = session.scalars(select(BudgetAlert)).all()
        assert [(a.scope, a.threshold) for a in alerts] == [(budget.key_scope(requester.api_key_id), threshold)]
    # ... and sent on, once.
    assert [(alert.scope, alert.threshold) for alert in fired] == [(budget.key_scope(requester.api_key_id), threshold)]
    # The outcome, its attempts and both settlements: one statement, the only one touching the ledger.
    ledger_statements = [statement for statement in statements if "monthly_budgets" in statement]
    assert len(ledger_statements) == 1 and ledger_statements[0].startswith("WITH ended AS")
    # psycopg parses a statement once and caches it only up to this length: past it, every run parses it anew.
    assert max(len(statement) for statement in statements) <= MAX_CACHED_STATEMENT_LENGTH
    spent = (cost, Decimal(0), 1)
    assert _ledgers(sessions) == {budget.GLOBAL_SCOPE: spent, budget.key_scope(requester.api_key_id): spent}
    assert bodies[accepted.id]["response"] == "Paris." and len(bodies[accepted.id]["attempts"]) == 2


class _TakenOver(FakeLLMClient):
    """An upstream so slow that, while it answers, the job's lease lapses and another run claims the job."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__()
        self.sessions = sessions

    def complete(self, **call):
        with self.sessions.begin() as session:
            session.execute(update(RequestLog).values(run_count=RequestLog.run_count + 1))
        return super().complete(**call)


def test_a_finish_that_lost_its_claim_writes_nothing(postgres_engine, catalog) -> None:
    settings = _settings(postgres_engine)
    sessions = make_sessionmaker(postgres_engine)
    _open_months(sessions, lifecycle.limits_of(settings, None))
    accepted = _accept(sessions, catalog, settings, prompt=PROMPT, max_tokens=50)
    assert accepted is not None
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=_TakenOver(sessions))
    before = _ledgers(sessions)

    assert runs.run(accepted.id, deps=deps) is None

    assert _ledgers(sessions) == before
    with sessions() as session:
        job = session.get(RequestLog, accepted.id)
        assert job is not None and (job.status, job.settled, job.response) == (JobStatus.RUNNING, False, None)
        assert session.scalars(select(RequestAttempt)).all() == []


def test_concurrent_accepts_and_finishes_on_two_scopes_neither_deadlock_nor_drift(postgres_engine, catalog) -> None:
    """Every path locks a request's scopes global first: many runs at once on one key end exact, with no error."""
    settings = _settings(postgres_engine, monthly_budget_limit=Decimal(100), db_pool_size=16)
    sessions = make_sessionmaker(postgres_engine)
    requester = _key(sessions, Decimal(50))
    _open_months(sessions, lifecycle.limits_of(settings, requester))
    errors: list[BaseException] = []
    finished: list[JobStatus | None] = []

    def submit_and_run(count: int) -> None:
        deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=FakeLLMClient(),
                            on_alert=lambda alert: None)  # fmt: skip
        try:
            for _ in range(count):
                accepted = _accept(sessions, catalog, settings, requester, prompt=PROMPT, max_tokens=50)
                assert accepted is not None
                finished.append(runs.run(accepted.id, deps=deps))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=submit_and_run, args=(10,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == [] and finished == [JobStatus.SUCCEEDED] * 80
    with sessions() as session:
        spent = sum(session.scalars(select(RequestLog.cost)), Decimal(0))
    ledger = _ledgers(sessions)
    assert ledger[budget.GLOBAL_SCOPE] == ledger[budget.key_scope(requester.api_key_id)] == (spent, Decimal(0), 80)
