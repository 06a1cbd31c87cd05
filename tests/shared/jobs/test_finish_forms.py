"""The single-statement and the transactional accept and finish leave the same ledger, scenario for scenario."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.errors import BudgetExceeded
from shared.errors import PermanentLLMError
from shared.jobs import batches
from shared.jobs import lifecycle
from shared.jobs import recording
from shared.jobs import runs
from shared.ledger import api_keys
from shared.routing.catalog import Catalog
from shared.store.models import Batch
from shared.store.models import BudgetAlert
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from tests.support.databases import ReusableSchema
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

PROMPT = "What is the capital of France?"
CHEAP = "gpt-3.5-turbo"


def _play(engine: Engine, catalog: Catalog, *, alone: bool) -> dict[str, Any]:
    """Run every scenario through one form of accept and finish; return the ledgers they leave."""
    settings = make_test_settings(
        engine.url.render_as_string(hide_password=False), monthly_budget_limit=Decimal(10), alert_thresholds=[1, 50]
    )
    sessions = make_sessionmaker(engine)
    fake = FakeLLMClient()
    announced: list[Any] = []
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None,
                        on_alert=announced.append)  # fmt: skip
    request = lifecycle.JobRequest(prompt=PROMPT, max_tokens=50, model=CHEAP)
    bound = lifecycle.bound_for(request, catalog=catalog, settings=settings)
    with sessions.begin() as session:
        # Room for two jobs' bounds: the first answer crosses 1 % of it.
        small, _ = api_keys.create(session, name="small", monthly_budget=bound * 2)
        spender, _ = api_keys.create(session, name="spender", monthly_budget=Decimal(5))
    refusals: list[str] = []

    def accept(requester: lifecycle.Requester | None = None, **fields: Any) -> str | None:
        with sessions() as session:
            try:
                return lifecycle.create_and_commit(
                    session, alone=alone, request=lifecycle.JobRequest(**{**vars(request), **fields}),
                    catalog=catalog, settings=settings, requester=requester,
                ).id  # fmt: skip
            except BudgetExceeded as refusal:
                refusals.append(refusal.details["scope"])
                return None

    keyed = lifecycle.Requester(small.id, small.monthly_budget)
    # Within the budget, global scope alone, answered.
    fake.script(CHEAP, ok(prompt_tokens=40, completion_tokens=45))
    runs.run(accept(), deps=deps)
    # A key's budget: two jobs reserve, the first answers (an alert), the second fails (nothing spent).
    first, second = accept(keyed), accept(keyed)
    # Over the key's budget: refused while both are held, in either form.
    assert accept(keyed) is None
    fake.script(CHEAP, ok(prompt_tokens=40, completion_tokens=45), PermanentLLMError("400", status_code=400))
    for fallback in ("gpt-4", "gpt-4-turbo"):
        fake.script(fallback, PermanentLLMError("400", status_code=400))
    runs.run(first, deps=deps)
    runs.run(second, deps=deps)
    # Answered again: its threshold already fired this month, it does not fire twice.
    fake.script(CHEAP, ok(prompt_tokens=40, completion_tokens=45))
    runs.run(accept(keyed), deps=deps)
    # Cancelled before it ran.
    cancelled = accept()
    with sessions.begin() as session:
        lifecycle.cancel(session, job_id=cancelled)
    # A batch: its last job completes it (the transactional form, in both).
    with sessions.begin() as session:
        _, rows = batches.create(session, requests=[request, request], catalog=catalog, settings=settings)
        batch_jobs = [row.id for row in rows]
    for job_id in batch_jobs:
        runs.run(job_id, deps=deps)
    # Billed over its bound, last: recorded as billed, its scopes' months (the global one too) held.
    fake.script(CHEAP, ok(prompt_tokens=200_000, completion_tokens=45))
    runs.run(accept(lifecycle.Requester(spender.id, spender.monthly_budget)), deps=deps)
    return {"refusals": refusals, "announced": [_alert(alert) for alert in announced], **_ledgers(sessions)}


def _alert(alert: Any) -> tuple[Any, ...]:
    payload = alert.as_payload()
    return tuple(sorted((name, str(value)) for name, value in payload.items() if name != "job_id"))


def _ledgers(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        budgets = [
            (row.scope, row.total_spent, row.reserved, row.request_count, row.monthly_limit, row.held_by_job is None)
            for row in session.scalars(select(MonthlyBudget).order_by(MonthlyBudget.scope))
        ]
        jobs = [
            (job.status, job.error_code, job.cost, job.reserved_cost, job.settled, job.usage_over_bound,
             job.tokens_used, job.model_used, job.batch_index, job.lease_expires_at, job.in_flight_cost,
             [(a.seq, a.outcome, a.cost) for a in job.attempts])
            for job in session.scalars(select(RequestLog).order_by(RequestLog.created_at, RequestLog.batch_index))
        ]  # fmt: skip
        fired = [
            (row.scope, row.threshold, row.spent, row.monthly_limit)
            for row in session.scalars(select(BudgetAlert).order_by(BudgetAlert.scope, BudgetAlert.threshold))
        ]
        completed = [row.completed_at is not None for row in session.scalars(select(Batch))]
    return {"budgets": budgets, "jobs": jobs, "alerts": fired, "batches": completed}


def test_both_forms_leave_the_same_ledgers(
    postgres_schema: ReusableSchema, postgres_engine: Engine, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[bool] = []
    with monkeypatch.context() as patched:
        real = recording.one_statement_can
        patched.setattr(recording, "one_statement_can", lambda *args: statements.append(real(*args)) or statements[-1])
        in_one_statement = _play(postgres_engine, catalog, alone=True)
    postgres_schema.empty()
    monkeypatch.setattr(recording, "one_statement_can", lambda *args: False)

    in_transactions = _play(postgres_engine, catalog, alone=False)

    assert in_one_statement == in_transactions
    # The scenarios did what they are named for: the forms were compared on each of these.
    assert True in statements and in_one_statement["refusals"] == ["key:1"]
    assert [(scope, threshold) for scope, threshold, *_ in in_one_statement["alerts"]] == [
        ("global", 1), ("key:1", 1), ("key:2", 1),
    ]  # fmt: skip
    # Those three, each once though key:1 settled twice past its threshold, and the bill over its bound.
    assert len(in_one_statement["announced"]) == 4
    assert [not_held for *_, not_held in in_one_statement["budgets"]] == [False, True, False]
    assert in_one_statement["batches"] == [True]
    statuses = [(status.value, code) for status, code, *_ in in_one_statement["jobs"]]
    assert statuses == [
        ("succeeded", None), ("succeeded", None), ("failed", "upstream_rejected"), ("succeeded", None),
        ("failed", "cancelled"), ("succeeded", None), ("succeeded", None), ("succeeded", None),
    ]  # fmt: skip
