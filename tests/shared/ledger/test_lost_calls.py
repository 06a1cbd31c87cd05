"""Lost runs and runs that cannot record: every call that may have been billed is charged, the job ends once.

Each test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy import update

from shared.errors import TransientLLMError
from shared.jobs import dispatch
from shared.jobs import lifecycle
from shared.jobs import reaper
from shared.jobs import runs
from shared.jobs.views import job_body
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.store.types import utcnow
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok
from tests.support.prompts import EASY

CHEAP = "gpt-3.5-turbo"


class WorkerDied(BaseException):
    """What a SIGKILL looks like from inside the run: nothing after it runs, not even `except Exception`."""


@pytest.fixture
def deps(database_url: str, engine, catalog) -> runs.RunDeps:
    """On SQLite and PostgreSQL (the `database` fixture's two runs)."""
    settings = make_test_settings(database_url, escalation_enabled=False, job_lease_s=60)
    return runs.RunDeps(
        sessions=make_sessionmaker(engine), catalog=catalog, settings=settings, client=FakeLLMClient(),
        sleep=lambda _: None,
    )  # fmt: skip


def _submit(deps: runs.RunDeps, **request: object) -> str:
    with deps.sessions.begin() as session:
        return lifecycle.create(
            session, request=lifecycle.JobRequest(prompt=EASY, tier="cheap", **request), catalog=deps.catalog,
            settings=deps.settings,
        ).id  # fmt: skip


def _job(deps: runs.RunDeps, job_id: str) -> RequestLog:
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        job.attempts  # noqa: B018  (loaded while the session is open)
        return job


def _requeued_total() -> float:
    return REGISTRY.get_sample_value("model_router_jobs_requeued_total") or 0.0


def _ledger(deps: runs.RunDeps) -> MonthlyBudget:
    with deps.sessions() as session:
        return session.scalars(select(MonthlyBudget).where(MonthlyBudget.scope == "global")).one()


def _bound(deps: runs.RunDeps, job_id: str) -> Decimal:
    """The most one call of the cheap model can cost for the job, as the pre-call guard counts it."""
    job = _job(deps, job_id)
    request = dispatch.Job(prompt=job.prompt, max_tokens=job.max_tokens, preference=job.preference, model=None,
                            tier="cheap", max_tier=None, reserved_cost=job.reserved_cost, deadline_s=1)  # fmt: skip
    return dispatch.attempt_bound(request, deps.catalog.get_model(CHEAP))


def _die_mid_call(deps: runs.RunDeps, job_id: str) -> None:
    """Run the job with a worker that dies while its upstream call is out, then let its lease lapse."""
    deps.client.script(CHEAP, WorkerDied())
    with pytest.raises(WorkerDied):
        runs.run(job_id, deps=deps)
    assert _job(deps, job_id).status is JobStatus.RUNNING
    with deps.sessions.begin() as session:
        session.execute(
            update(RequestLog).where(RequestLog.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_a_rerun_charges_the_call_its_lost_run_had_out_at_its_bound(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    bound = _bound(deps, job_id)
    _die_mid_call(deps, job_id)
    deps.client.script(CHEAP, ok(prompt_tokens=10, completion_tokens=20))

    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED

    job = _job(deps, job_id)
    answered = deps.catalog.get_model(CHEAP).cost(10, 20)
    assert (job.cost, job.unconfirmed_cost, job.in_flight_cost) == (bound + answered, bound, 0)
    lost = [a for a in job.attempts if a.outcome == "unconfirmed"]
    assert [(a.error_class, a.cost) for a in lost] == [("worker_lost", bound)]
    body = job_body(job)
    assert body["unconfirmed_cost"] == bound and body["cost"] == bound + answered
    # The re-run's reservation was topped up by the lost call, so it could still pay for its own answer.
    ledger = _ledger(deps)
    assert (ledger.total_spent, ledger.reserved) == (job.cost, 0)
    assert job.cost <= job.reserved_cost


def test_the_reaper_charges_a_lost_runs_call_at_its_bound(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    bound = _bound(deps, job_id)
    _die_mid_call(deps, job_id)
    with deps.sessions.begin() as session:
        session.execute(update(RequestLog).where(RequestLog.id == job_id).values(run_count=deps.settings.job_max_runs))

    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings)

    assert [(f.job_id, f.error_code, f.unconfirmed_cost) for f in swept.failed] == [(job_id, "worker_lost", bound)]
    job = _job(deps, job_id)
    assert (job.status, job.cost, job.unconfirmed_cost, job.in_flight_cost) == (JobStatus.FAILED, bound, bound, 0)
    # The job's cost is the sum of its attempts, as always: one carries the charge.
    assert [(a.outcome, a.error_class, a.cost) for a in job.attempts] == [("unconfirmed", "worker_lost", bound)]
    assert job_body(job)["unconfirmed_cost"] == bound
    ledger = _ledger(deps)
    assert (ledger.total_spent, ledger.reserved) == (bound, 0)


def test_a_rerun_the_budget_cannot_top_up_never_spends_past_the_reservation(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    # The month's budget is exactly what the job holds: nothing is left to top a re-run up with.
    with deps.sessions.begin() as session:
        job = session.get(RequestLog, job_id)
        session.execute(update(MonthlyBudget).values(monthly_limit=job.reserved_cost))
    limit = _job(deps, job_id).reserved_cost
    settings = deps.settings.model_copy(update={"monthly_budget_limit": limit})
    deps = runs.RunDeps(sessions=deps.sessions, catalog=deps.catalog, settings=settings, client=deps.client)
    _die_mid_call(deps, job_id)
    deps.client.script(CHEAP, ok())

    runs.run(job_id, deps=deps)

    job = _job(deps, job_id)
    assert job.status.is_terminal and job.cost <= job.reserved_cost == limit
    assert job.unconfirmed_cost == _bound(deps, job_id)
    ledger = _ledger(deps)
    assert ledger.total_spent + ledger.reserved <= limit and ledger.reserved == 0


def test_a_run_interrupted_by_its_time_limit_ends_failed_once_with_the_call_charged(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    bound = _bound(deps, job_id)
    deps.client.script(CHEAP, SoftTimeLimitExceeded())

    assert runs.run(job_id, deps=deps) is JobStatus.FAILED

    job = _job(deps, job_id)
    assert (job.cost, job.unconfirmed_cost, job.in_flight_cost) == (bound, bound, 0)
    assert [(a.outcome, a.error_class) for a in job.attempts] == [("unconfirmed", "interrupted")]
    assert _ledger(deps).total_spent == bound and _ledger(deps).reserved == 0
    # Nothing left for the reaper: the job is not run (nor paid) again.
    later = utcnow() + timedelta(seconds=deps.settings.job_max_age_s + deps.settings.job_lease_s)
    assert reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=later).requeued == []


def test_an_outcome_the_database_refuses_fails_the_job_once_with_its_cost(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    bound = _bound(deps, job_id)
    # Neither column takes these: the usage is out of any integer column's range, and on PostgreSQL the finish
    # reason is also longer than its column. Retrying cannot help.
    deps.client.script(CHEAP, ok(finish_reason="x" * 200, prompt_tokens=2**63, completion_tokens=1))

    assert runs.run(job_id, deps=deps) is JobStatus.FAILED

    job = _job(deps, job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "unrecordable")
    # The answer's usage cannot be true (its reservation could not have paid for it): the call is charged
    # at its bound.
    assert (job.cost, job.unconfirmed_cost) == (bound, bound)
    assert [(a.outcome, a.cost) for a in job.attempts] == [("unconfirmed", bound)]
    assert (_ledger(deps).total_spent, _ledger(deps).reserved) == (bound, 0)


def test_an_exception_after_the_commit_leaves_the_job_finished(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    deps.client.script(CHEAP, ok())

    def broken(*_: object) -> None:
        raise RuntimeError("the announcement channel is gone")

    deps = runs.RunDeps(sessions=deps.sessions, catalog=deps.catalog, settings=deps.settings, client=deps.client,
                        on_finished=broken, on_alert=broken)  # fmt: skip
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert _job(deps, job_id).status is JobStatus.SUCCEEDED


def test_the_deadline_counts_from_the_tasks_start_so_the_run_ends_before_the_soft_limit(deps: runs.RunDeps) -> None:
    """A job at the longest deadline against an upstream that hangs until its timeout: failed once, in time."""
    limits = deps.settings.time_limits
    job_id = _submit(deps, deadline_s=limits.max_deadline_s)
    assert _job(deps, job_id).deadline_s == limits.max_deadline_s
    calls: list[float | None] = []

    def hang(*, timeout_s: float | None, **_: object) -> None:
        calls.append(timeout_s)
        time.sleep(max(timeout_s or 0, 0))
        raise TransientLLMError("upstream timed out", details={"error_class": "timeout"})

    deps.client.complete = hang  # type: ignore[method-assign]
    # The task started long ago (its message waited in the worker, say): only 0.5 s of its deadline is left.
    started = time.monotonic() - (limits.max_deadline_s - 0.5)

    began = time.monotonic()
    assert runs.run(job_id, deps=deps, started=started) is JobStatus.FAILED
    assert time.monotonic() - began < 2
    assert calls and all(timeout is not None and timeout <= 0.5 for timeout in calls)
    job = _job(deps, job_id)
    assert (job.cost, job.in_flight_cost, _ledger(deps).reserved) == (0, 0, 0)


def test_a_backlog_whose_messages_the_broker_holds_is_neither_resent_nor_expired(deps: runs.RunDeps) -> None:
    waiting, delivered, lost = (_submit(deps) for _ in range(3))
    old = utcnow() - timedelta(seconds=deps.settings.job_max_age_s + 1)
    with deps.sessions.begin() as session:
        session.execute(update(RequestLog).values(created_at=old, enqueued_at=old))
    held = reaper.Messages(waiting=frozenset({waiting}), delivered=frozenset({delivered}))
    requeued_before = _requeued_total()

    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings, messages=lambda: held)

    # Only the job whose message is gone is dealt with (here: expired, as it is older than JOB_MAX_AGE_S).
    assert swept.requeued == [] and [f.job_id for f in swept.failed] == [lost]
    assert {_job(deps, j).status for j in (waiting, delivered)} == {JobStatus.QUEUED}
    # Seen in the broker just now: not looked at again for a lease.
    assert reaper.sweep(sessions=deps.sessions, settings=deps.settings, messages=lambda: held).failed == []
    assert _requeued_total() == requeued_before


def test_a_queued_job_whose_message_is_gone_is_resent(deps: runs.RunDeps) -> None:
    job_id = _submit(deps)
    with deps.sessions.begin() as session:
        session.execute(update(RequestLog).values(enqueued_at=utcnow() - timedelta(seconds=61)))
    requeued_before = _requeued_total()
    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings, messages=reaper.Messages)
    assert swept.requeued == [(job_id, False)]
    assert _requeued_total() == requeued_before + 1
