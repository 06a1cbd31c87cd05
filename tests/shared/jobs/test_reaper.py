"""The reaper: lost jobs are re-enqueued, hopeless ones failed, and every reservation is closed once."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy import update

from shared.jobs import lifecycle
from shared.jobs import reaper
from shared.jobs import runs
from shared.ledger import budget
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.types import utcnow
from tests.support.fakes import FakeLLMClient
from tests.support.prompts import EASY


@pytest.fixture
def deps(sessions, catalog, settings) -> runs.RunDeps:
    return runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=FakeLLMClient(),
                        sleep=lambda _: None)  # fmt: skip


def _submit(deps: runs.RunDeps) -> str:
    with deps.sessions.begin() as session:
        return lifecycle.create(session, request=lifecycle.JobRequest(prompt=EASY), catalog=deps.catalog,
                           settings=deps.settings).id  # fmt: skip


def _set(deps: runs.RunDeps, job_id: str, **values) -> None:
    with deps.sessions.begin() as session:
        session.execute(update(RequestLog).where(RequestLog.id == job_id).values(**values))


def _job(deps: runs.RunDeps, job_id: str) -> RequestLog:
    with deps.sessions() as session:
        return session.get(RequestLog, job_id)


def _ledger(deps: runs.RunDeps) -> MonthlyBudget:
    with deps.sessions() as session:
        return session.scalars(select(MonthlyBudget)).one()


def _lapse(deps: runs.RunDeps, job_id: str, *, run_count: int) -> None:
    assert isinstance(runs._claim(job_id, deps=deps), runs.Claim)
    _set(deps, job_id, lease_expires_at=utcnow() - timedelta(seconds=1), run_count=run_count)


def test_a_running_job_whose_worker_died_is_requeued_and_can_finish(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    _lapse(deps, job_id, run_count=1)
    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings)
    assert (swept.requeued, swept.failed) == ([(job_id, False)], [])
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert _ledger(deps).reserved == Decimal(0)


def test_a_job_that_lost_its_worker_too_often_fails_and_releases_its_reservation(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    _lapse(deps, job_id, run_count=deps.settings.job_max_runs)
    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings)
    assert [finished.job_id for finished in swept.failed] == [job_id]
    job = _job(deps, job_id)
    assert (job.status, job.error_code, job.settled) == (JobStatus.FAILED, "worker_lost", True)
    ledger = _ledger(deps)
    assert (ledger.reserved, ledger.total_spent) == (Decimal(0), Decimal(0))


def test_a_queued_job_whose_message_was_lost_is_requeued(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    _set(deps, job_id, enqueued_at=utcnow() - timedelta(seconds=deps.settings.job_lease_s + 1))
    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings)
    assert swept.requeued == [(job_id, False)]
    assert _job(deps, job_id).enqueued_at > utcnow() - timedelta(seconds=5)
    assert reaper.sweep(sessions=deps.sessions, settings=deps.settings).requeued == []


def test_a_queued_job_past_its_age_fails_as_expired(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    old = utcnow() - timedelta(seconds=deps.settings.job_max_age_s + 1)
    _set(deps, job_id, created_at=old, enqueued_at=old)
    assert [f.job_id for f in reaper.sweep(sessions=deps.sessions, settings=deps.settings).failed] == [job_id]
    assert _job(deps, job_id).error_code == "expired"
    assert _ledger(deps).reserved == Decimal(0)


def test_fresh_and_finished_jobs_are_left_alone(deps: runs.RunDeps) -> None:
    queued = _submit(deps)
    running = _submit(deps)
    assert isinstance(runs._claim(running, deps=deps), runs.Claim)
    done = _submit(deps)
    runs.run(done, deps=deps)
    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings)
    assert (swept.requeued, swept.failed) == ([], [])
    assert {_job(deps, j).status for j in (queued, running, done)} == {
        JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED
    }  # fmt: skip


def test_a_failed_job_is_settled_once_however_often_the_reaper_runs(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    _lapse(deps, job_id, run_count=deps.settings.job_max_runs)
    later = utcnow() + timedelta(hours=2)
    for _ in range(3):
        reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=later)
    ledger = _ledger(deps)
    assert (ledger.reserved, ledger.request_count) == (Decimal(0), 1)


def test_a_reservation_left_open_at_month_end_closes_in_its_own_month(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    job = _job(deps, job_id)
    reserved = job.reserved_cost
    # Move the job and its reservation into last month's ledger, as if it had been accepted then.
    this = budget.Period.of(job.created_at)
    last = budget.Period(this.year, this.month - 1) if this.month > 1 else budget.Period(this.year - 1, 12)
    with deps.sessions.begin() as session:
        budget.settle(session, scope=budget.GLOBAL_SCOPE, period=budget.Period.of(job.created_at), reserved=reserved,
                      cost=Decimal(0))  # fmt: skip
        budget.reserve(session, scope=budget.GLOBAL_SCOPE, period=last, amount=reserved,
                       limit=deps.settings.monthly_budget_limit)  # fmt: skip
    _set(deps, job_id, budget_year=last.year, budget_month=last.month)
    _lapse(deps, job_id, run_count=deps.settings.job_max_runs)
    reaper.sweep(sessions=deps.sessions, settings=deps.settings)
    with deps.sessions() as session:
        rows = {(row.year, row.month): row for row in session.scalars(select(MonthlyBudget))}
    assert rows[(last.year, last.month)].reserved == Decimal(0)
    assert all(row.reserved == Decimal(0) for row in rows.values())
