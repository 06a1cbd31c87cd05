"""Handing a job back: the claim is released under its fence, the next run takes it at once, money stays exact."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from shared.jobs import handback
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.types import utcnow
from tests.support.fakes import FakeLLMClient
from tests.support.prompts import EASY


class HandedBackMidCall(FakeLLMClient):
    """Answers every call, but the first one only after its worker handed the job back (as at shutdown)."""

    def __init__(self) -> None:
        super().__init__()
        self.deps: runs.RunDeps | None = None
        self.handed_back: list[bool] = []

    def complete(self, **kwargs):  # type: ignore[no-untyped-def]
        if not self.handed_back:
            assert self.deps is not None and self.deps.held is not None
            (held,) = self.deps.held.list_()
            self.handed_back.append(
                handback.release(self.deps.sessions, job_id=held.job_id, run_count=held.run_count, now=utcnow())
            )
        return super().complete(**kwargs)


@pytest.fixture
def llm_handing_back() -> HandedBackMidCall:
    return HandedBackMidCall()


@pytest.fixture
def deps(sessions, catalog, settings, llm_handing_back) -> runs.RunDeps:
    deps = runs.RunDeps(
        sessions=sessions, catalog=catalog, settings=settings, client=llm_handing_back, sleep=lambda _: None,
        held=handback.HeldClaims(),
    )  # fmt: skip
    llm_handing_back.deps = deps
    return deps


def _submit(deps: runs.RunDeps) -> str:
    with deps.sessions.begin() as session:
        return lifecycle.create(session, request=lifecycle.JobRequest(prompt=EASY), catalog=deps.catalog,
                                settings=deps.settings).id  # fmt: skip


def test_a_run_holds_its_claim_while_it_runs_and_lets_go_of_it_after(deps: runs.RunDeps, llm_handing_back) -> None:
    llm_handing_back.handed_back.append(False)  # never hand back: just look
    seen: list[list[handback.Held]] = []
    answer = llm_handing_back.complete

    def looking(**kwargs):  # type: ignore[no-untyped-def]
        seen.append(deps.held.list_())
        return answer(**kwargs)

    llm_handing_back.complete = looking  # type: ignore[method-assign]
    job_id = _submit(deps)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert [(held.job_id, held.run_count, held.batch, held.stream) for held in seen[0]] == [(job_id, 1, False, False)]
    assert deps.held.list_() == []


def test_a_handed_back_job_is_taken_at_once_and_its_lost_call_charged(deps: runs.RunDeps, llm_handing_back) -> None:
    job_id = _submit(deps)
    # The first run loses its claim while its call is in flight: it cannot record the job.
    assert runs.run(job_id, deps=deps) is None
    assert llm_handing_back.handed_back == [True]
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        assert (job.status, job.lease_expires_at, job.run_count) == (JobStatus.QUEUED, None, 1)
        noted = job.in_flight_cost
    assert noted > 0
    # The next run claims it at once (no lease to wait for) and charges the lost call at its bound.
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        ledger = session.scalars(select(MonthlyBudget)).one()
        attempts = session.execute(
            select(RequestAttempt.outcome, RequestAttempt.cost).where(RequestAttempt.job_id == job_id)
        ).all()
    assert (job.run_count, job.unconfirmed_cost, job.in_flight_cost) == (2, noted, Decimal(0))
    # One attempt carries the lost call at its bound, the other is the call that answered.
    assert sorted(outcome for outcome, _ in attempts) == ["ok", "unconfirmed"]
    assert job.cost == sum((cost for _, cost in attempts), Decimal(0)) > noted
    assert (ledger.reserved, ledger.total_spent) == (Decimal(0), job.cost)


def test_a_claim_that_moved_on_is_not_released(deps: runs.RunDeps, llm_handing_back) -> None:
    llm_handing_back.handed_back.append(False)
    job_id = _submit(deps)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert not handback.release(deps.sessions, job_id=job_id, run_count=1, now=utcnow())
    with deps.sessions() as session:
        assert session.get(RequestLog, job_id).status is JobStatus.SUCCEEDED


def test_a_later_runs_claim_is_not_forgotten_when_an_earlier_run_ends() -> None:
    held = handback.HeldClaims(runner=lambda: "greenlet")
    held.add(job_id="j", run_count=2, batch=True, stream=False)
    held.discard("j", 1)
    assert [(claim.job_id, claim.run_count, claim.runner) for claim in held.list_()] == [("j", 2, "greenlet")]
