"""A running job whose worker died is taken over once the worker's heartbeat key is gone, not after its lease.

Each test runs on SQLite and on PostgreSQL, against the unit suites' Redis: the heartbeat keys are real.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from sqlalchemy import select

from shared.jobs import dispatch
from shared.jobs import lifecycle
from shared.jobs import reaper
from shared.jobs import runs
from shared.ledger import lost_calls
from shared.store import heartbeats
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
DEAD = "celery@dead"
ALIVE = "celery@alive"


class WorkerDied(BaseException):
    """What a SIGKILL looks like from inside the run: nothing after it runs, not even `except Exception`."""


@pytest.fixture
def deps(database_url: str, engine, catalog) -> runs.RunDeps:
    """On SQLite and PostgreSQL, with a lease (300 s) far longer than a heartbeat key lives (30 s)."""
    settings = make_test_settings(database_url, escalation_enabled=False, job_lease_s=300, worker_heartbeat_s=10)
    return runs.RunDeps(
        sessions=make_sessionmaker(engine), catalog=catalog, settings=settings, client=FakeLLMClient(),
        sleep=lambda _: None,
    )  # fmt: skip


@pytest.fixture
def alive(real_redis: redis.Redis) -> Callable[[set[str]], set[str] | None]:
    """Which workers are alive, by their keys in the unit suites' Redis; ALIVE's key is there."""
    heartbeats.Heartbeat(real_redis, worker=ALIVE, interval_s=10).beat()
    return lambda workers: heartbeats.find_alive(real_redis, workers)


def _submit(deps: runs.RunDeps) -> str:
    with deps.sessions.begin() as session:
        return lifecycle.create(
            session, request=lifecycle.JobRequest(prompt=EASY, tier="cheap"), catalog=deps.catalog,
            settings=deps.settings,
        ).id  # fmt: skip


def _job(deps: runs.RunDeps, job_id: str) -> RequestLog:
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        job.attempts  # noqa: B018  (loaded while the session is open)
        return job


def _ledger(deps: runs.RunDeps) -> MonthlyBudget:
    with deps.sessions() as session:
        return session.scalars(select(MonthlyBudget).where(MonthlyBudget.scope == "global")).one()


def _bound(deps: runs.RunDeps, job_id: str) -> Decimal:
    job = _job(deps, job_id)
    request = dispatch.Job(prompt=job.prompt, max_tokens=job.max_tokens, preference=job.preference, model=None,
                            tier="cheap", max_tier=None, reserved_cost=job.reserved_cost, deadline_s=1)  # fmt: skip
    return dispatch.attempt_bound(request, deps.catalog.get_model(CHEAP))


def _die_mid_call(deps: runs.RunDeps, job_id: str, *, worker: str) -> None:
    """Run the job on `worker`, which dies while its upstream call is out; its lease still runs."""
    deps.client.script(CHEAP, WorkerDied())
    with pytest.raises(WorkerDied):
        runs.run(job_id, deps=deps, worker=worker)
    job = _job(deps, job_id)
    assert (job.status, job.worker) == (JobStatus.RUNNING, worker)
    assert job.lease_expires_at > utcnow() + timedelta(seconds=200)


def _after_a_key_lifetime(deps: runs.RunDeps) -> datetime:
    return utcnow() + timedelta(seconds=heartbeats.key_lifetime_s(deps.settings.worker_heartbeat_s) + 1)


def test_a_job_whose_worker_is_gone_is_resent_long_before_its_lease_and_charged_once(deps, alive) -> None:
    job_id = _submit(deps)
    bound = _bound(deps, job_id)
    _die_mid_call(deps, job_id, worker=DEAD)

    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=_after_a_key_lifetime(deps), alive=alive)

    assert (swept.requeued, swept.failed) == ([(job_id, False)], [])
    deps.client.script(CHEAP, ok(prompt_tokens=10, completion_tokens=20))
    assert runs.run(job_id, deps=deps, worker=ALIVE) is JobStatus.SUCCEEDED
    job = _job(deps, job_id)
    answered = deps.catalog.get_model(CHEAP).cost(10, 20)
    # The dead run's call is charged once, at its bound, as a lapsed lease's would be.
    assert (job.run_count, job.worker, job.cost, job.unconfirmed_cost) == (2, ALIVE, bound + answered, bound)
    ledger = _ledger(deps)
    assert (ledger.total_spent, ledger.reserved) == (job.cost, 0)


def test_the_run_that_lost_its_job_to_the_takeover_can_neither_spend_nor_finish(deps, alive) -> None:
    job_id = _submit(deps)
    _die_mid_call(deps, job_id, worker=DEAD)
    reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=_after_a_key_lifetime(deps), alive=alive)
    deps.client.script(CHEAP, ok())
    assert runs.run(job_id, deps=deps, worker=ALIVE) is JobStatus.SUCCEEDED

    # Had the first run been alive after all, it notes no further call and records nothing under its claim.
    assert not lost_calls.note(deps.sessions, job_id=job_id, run_count=1, amount=Decimal("0.01"))
    assert _job(deps, job_id).run_count == 2


def test_a_job_whose_worker_is_gone_after_its_last_run_fails_worker_lost_charging_its_call(deps, alive) -> None:
    deps = runs.RunDeps(**{**deps.__dict__, "settings": deps.settings.model_copy(update={"job_max_runs": 1})})
    job_id = _submit(deps)
    bound = _bound(deps, job_id)
    _die_mid_call(deps, job_id, worker=DEAD)

    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=_after_a_key_lifetime(deps), alive=alive)

    assert [(f.job_id, f.error_code, f.unconfirmed_cost) for f in swept.failed] == [(job_id, "worker_lost", bound)]
    job = _job(deps, job_id)
    assert (job.status, job.cost, job.in_flight_cost) == (JobStatus.FAILED, bound, 0)
    assert [(a.outcome, a.error_class, a.cost) for a in job.attempts] == [("unconfirmed", "worker_lost", bound)]
    ledger = _ledger(deps)
    assert (ledger.total_spent, ledger.reserved) == (bound, 0)


def test_a_job_whose_worker_beats_is_left_to_its_run(deps, alive) -> None:
    job_id = _submit(deps)
    _die_mid_call(deps, job_id, worker=ALIVE)

    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=_after_a_key_lifetime(deps), alive=alive)

    assert (swept.requeued, swept.failed) == ([], [])
    assert _job(deps, job_id).lease_expires_at > utcnow() + timedelta(seconds=200)


def test_a_claim_younger_than_a_key_lifetime_is_not_judged(deps, alive) -> None:
    # A worker that has just started may claim a job before its first heartbeat lands.
    job_id = _submit(deps)
    _die_mid_call(deps, job_id, worker=DEAD)
    almost = utcnow() + timedelta(seconds=heartbeats.key_lifetime_s(deps.settings.worker_heartbeat_s) - 2)

    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=almost, alive=alive)

    assert (swept.requeued, swept.failed) == ([], [])
    assert _job(deps, job_id).status is JobStatus.RUNNING


def test_without_an_answer_from_redis_a_job_waits_for_its_lease(deps) -> None:
    job_id = _submit(deps)
    _die_mid_call(deps, job_id, worker=DEAD)
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)

    swept = reaper.sweep(
        sessions=deps.sessions, settings=deps.settings, now=_after_a_key_lifetime(deps),
        alive=lambda workers: heartbeats.find_alive(unreachable, workers),
    )  # fmt: skip

    assert (swept.requeued, swept.failed) == ([], [])
    assert _job(deps, job_id).lease_expires_at > utcnow() + timedelta(seconds=200)


def test_a_job_claimed_by_a_run_that_named_no_worker_waits_for_its_lease(deps, alive) -> None:
    job_id = _submit(deps)
    _die_mid_call(deps, job_id, worker=DEAD)
    with deps.sessions.begin() as session:
        session.get(RequestLog, job_id).worker = None

    swept = reaper.sweep(sessions=deps.sessions, settings=deps.settings, now=_after_a_key_lifetime(deps), alive=alive)

    assert (swept.requeued, swept.failed) == ([], [])


def test_a_job_claimed_anew_since_its_worker_was_asked_about_keeps_its_new_lease(deps) -> None:
    job_id = _submit(deps)
    _die_mid_call(deps, job_id, worker=DEAD)

    def claimed_meanwhile(workers: set[str]) -> set[str]:
        # The lease lapses and another run claims the job between the reaper's read and its write.
        with deps.sessions.begin() as session:
            session.get(RequestLog, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        deps.client.script(CHEAP, WorkerDied())
        with pytest.raises(WorkerDied):
            runs.run(job_id, deps=deps, worker=DEAD)
        return set()

    swept = reaper.sweep(
        sessions=deps.sessions, settings=deps.settings, now=_after_a_key_lifetime(deps), alive=claimed_meanwhile
    )

    assert (swept.requeued, swept.failed) == ([], [])
    job = _job(deps, job_id)
    assert (job.run_count, job.status) == (2, JobStatus.RUNNING)
    assert job.lease_expires_at > utcnow() + timedelta(seconds=200)
