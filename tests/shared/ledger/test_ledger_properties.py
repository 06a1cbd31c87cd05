"""The ledger stays exact under random interleavings of accepting, running, cancelling, withdrawing and reaping.

A state machine drives jobs and batches through the real use cases against a real database, with workers
that die mid-call, leases that lapse, runs overtaken by other runs or by the reaper, and a monthly limit
small enough that refusals are common. After every step each scope's row must equal the sum of its jobs.
Every example gets a database of its own (a fresh SQLite file, or freshly truncated PostgreSQL tables):
function-scoped fixtures are not reset between Hypothesis examples.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any
from typing import ClassVar

from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy import Engine
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.errors import BudgetExceeded
from shared.errors import NotCancellable
from shared.errors import PermanentLLMError
from shared.errors import TransientLLMError
from shared.jobs import batches
from shared.jobs import lifecycle
from shared.jobs import reaper
from shared.jobs import runs
from shared.ledger import api_keys
from shared.ledger import budget
from shared.ledger import call_bound
from shared.routing import policy
from shared.routing.catalog import Catalog
from shared.routing.catalog import load_catalog
from shared.store.base import Base
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_engine
from shared.store.session import make_sessionmaker
from shared.store.types import from_nanos
from shared.store.types import utcnow
from shared.upstream.llm_client import Completion
from tests.conftest import make_test_settings
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.fakes import FLUENT
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

HEDGE = "I'm not sure, maybe Paris."
LEASE_S = 60
MAX_AGE_S = 3600
MAX_RUNS = 2
# How far ahead of the wall clock a sweep looks: not at all, past every lease, past every job's age (rarer,
# as it fails every stale job).
SWEEP_AHEAD_S = (0, LEASE_S + 1, LEASE_S + 1, MAX_AGE_S + LEASE_S + 1)
# Words that move the difficulty score around (and "café"/"naïve" make bytes outnumber characters).
WORDS = ("what is", "capital of", "prove", "derive", "algorithm", "optimize", "the", "café", "naïve", "x", "?")
# What happens while a run waits on its upstream: nothing; its worker dies (its lease running on, or long
# since lapsed); the reaper fails the job under it; or its lease lapses and another worker claims the job
# and either finishes it first or dies holding it.
MEANWHILE = ("nothing", "nothing", "worker dies", "worker dies, long ago", "reaped", "taken over", "taken, dies")
# What a model does when called: answer well, answer unsure (forcing escalation), or fail.
OUTCOMES = ("fluent", "fluent", "hedge", "transient", "permanent")
ANSWERS = ("fluent", "hedge")

# Reproducible runs that leave no example database in the tree. Function-scoped fixtures are fine here:
# each example truncates or creates its own tables. The explain phase traces every line while shrinking,
# which turns a half-minute shrink of a failing machine into a five-minute one that hits the test timeout.
COMMON = settings(
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    phases=[phase for phase in Phase if phase is not Phase.explain],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SQLITE_MACHINE = settings(COMMON, max_examples=60, stateful_step_count=40)
POSTGRES_MACHINE = settings(COMMON, max_examples=8, stateful_step_count=25)

# A global limit of a few typical job bounds (an unpinned 50-word, 200-token job reserves about $0.03),
# so that refusals are common but not universal; a key's own budget is often smaller still.
global_limits = st.integers(min_value=5_000_000, max_value=300_000_000).map(from_nanos)
key_budgets = st.one_of(st.none(), st.integers(min_value=0, max_value=100_000_000).map(from_nanos))
prompts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
token_limits = st.integers(min_value=1, max_value=400)
tiers = st.sampled_from([None, None, "cheap", "mid", "high"])
# An API key by index (-1: none).
keys = st.integers(min_value=-1, max_value=1)
# Token usage as percentages of the bound, often exactly at it: the worst case must still fit.
percent = st.one_of(st.just(100), st.integers(min_value=0, max_value=100))
shares = st.tuples(percent, percent)
# One behaviour per catalog model (extra entries are ignored).
scripts = st.lists(st.sampled_from(OUTCOMES), min_size=8, max_size=8)
picks = st.integers(min_value=0, max_value=10_000)

LedgerKey = tuple[str, int, int]
Snapshot = tuple[object, ...]


@functools.cache
def _catalog() -> Catalog:
    return load_catalog(SEED_CATALOG_PATH)


@dataclass(frozen=True)
class _Database:
    """One example's database: its engine, the URL settings name, and how to let go of it."""

    engine: Engine
    url: str
    close: Callable[[], None]


def _fresh_sqlite() -> _Database:
    directory = tempfile.mkdtemp(prefix="ledger-")
    url = f"sqlite:///{directory}/router.db"
    engine = make_engine(make_test_settings(url))
    Base.metadata.create_all(engine)

    def close() -> None:
        engine.dispose()
        shutil.rmtree(directory, ignore_errors=True)

    return _Database(engine, url, close)


def _truncated_postgres(engine: Engine) -> _Database:
    names = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return _Database(engine, engine.url.render_as_string(hide_password=False), lambda: None)


def _ledgers(session: Session) -> dict[LedgerKey, tuple[Decimal, Decimal, Decimal, int]]:
    rows = session.scalars(select(MonthlyBudget).execution_options(populate_existing=True))
    return {
        (row.scope, row.year, row.month): (row.monthly_limit, row.total_spent, row.reserved, row.request_count)
        for row in rows
    }


def _snapshot(sessions: sessionmaker[Session]) -> Snapshot:
    """Return everything the ledger and the jobs hold that a no-op must leave alone."""
    with sessions() as session:
        job_rows = session.scalars(select(RequestLog).order_by(RequestLog.id)).all()
        jobs_state = tuple(
            (
                j.id,
                j.status,
                j.run_count,
                j.cost,
                j.settled,
                j.lease_expires_at,
                j.finished_at,
                j.reserved_cost,
                j.unconfirmed_cost,
                j.in_flight_cost,
            )
            for j in job_rows
        )
        return (tuple(sorted(_ledgers(session).items())), jobs_state)


def _job(sessions: sessionmaker[Session], job_id: str) -> RequestLog | None:
    with sessions() as session:
        return session.get(RequestLog, job_id)


class _WorkerDied(BaseException):
    """The worker process vanished mid-call (a BaseException, so nothing on the way up handles it)."""


def _die() -> None:
    raise _WorkerDied


class _CheckFailed(BaseException):
    """A check made while a call was in flight failed: raised past the run, which ends any call's Exception."""


class _InterleavingClient(FakeLLMClient):
    """A fake upstream that, while its first call is in flight, lets something else happen to the job."""

    def __init__(self, meanwhile: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.meanwhile = meanwhile
        self.interrupted = False

    def complete(self, **call: Any) -> Completion:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            self.interrupted = True
            try:
                meanwhile()
            except AssertionError as failure:
                raise _CheckFailed(failure) from failure
        return super().complete(**call)


def _scripted_client(
    catalog: Catalog,
    script: list[str],
    *,
    job: RequestLog,
    share: tuple[int, int],
    attempts: int,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[_InterleavingClient, Callable[[], tuple[JobStatus, Decimal]]]:
    """Return a fake whose models behave as `script` says, and the status and cost a run with it must record.

    Every answer bills tokens within the job's bound, and each model is scripted for more calls than any run
    makes (fallbacks and escalation may call a model twice), so no unscripted default answer slips in. The
    calls earlier runs of the job left unrecorded are charged at their bounds on top (shared.ledger.lost_calls).
    """
    lost = job.unconfirmed_cost + job.in_flight_cost
    tokens = (
        call_bound.prompt_tokens_bound(prompt=job.prompt, messages=job.messages, options=job.upstream_options)
        * share[0]
        // 100,
        job.max_tokens * share[1] // 100,
    )
    fake = _InterleavingClient(meanwhile)
    behaviour: dict[str, str] = {}
    for outcome, model in zip(script, catalog.models, strict=False):
        behaviour[model.name] = outcome
        if outcome in ANSWERS:
            answer = FLUENT if outcome == "fluent" else HEDGE
            fake.script(model.name, *[ok(answer, prompt_tokens=tokens[0], completion_tokens=tokens[1])] * 4)
        elif outcome == "transient":
            fake.script(model.name, *[TransientLLMError("503", status_code=503)] * attempts * 4)
        else:
            fake.script(model.name, *[PermanentLLMError("400", status_code=400)] * 4)

    def expected() -> tuple[JobStatus, Decimal]:
        # Whatever the routing, fallbacks and escalation did: a run that got any answer succeeded, and it
        # was billed for exactly the calls that answered.
        answered = [name for name in fake.calls if behaviour[name] in ANSWERS]
        cost = sum((catalog.get_model(name).cost(*tokens) for name in answered), lost)
        return (JobStatus.SUCCEEDED if answered else JobStatus.FAILED), cost

    return fake, expected


class LedgerMachine(RuleBasedStateMachine):
    """Jobs are accepted, run, withdrawn, abandoned by dying workers and reaped, in any order."""

    open_database: ClassVar[Callable[[], _Database]] = staticmethod(_fresh_sqlite)

    def __init__(self) -> None:
        super().__init__()
        self.database = self.open_database()
        self.sessions = make_sessionmaker(self.database.engine)
        self.catalog = _catalog()
        self.settings: Settings = make_test_settings(self.database.url)
        self.requesters: list[lifecycle.Requester] = []
        self.created = 0
        self.withdrawn = 0
        # Job ids in the order they were accepted: ids are random, and picks must replay exactly.
        self.order: dict[str, int] = {}
        # Job ids by status as of the last invariant check, for preconditions and picking.
        self.by_status: dict[JobStatus, list[str]] = {status: [] for status in JobStatus}
        # The ledger and jobs as an interrupted run's `meanwhile` left them; the run must not change them.
        self.interrupted_at: Snapshot = ()

    def teardown(self) -> None:
        self.database.close()

    def deps(self, client: FakeLLMClient) -> runs.RunDeps:
        return runs.RunDeps(
            sessions=self.sessions,
            catalog=self.catalog,
            settings=self.settings,
            client=client,
            on_alert=lambda alert: None,
            sleep=lambda seconds: None,
        )

    def unfinished(self) -> list[str]:
        return self.by_status[JobStatus.QUEUED] + self.by_status[JobStatus.RUNNING]

    def finished(self) -> list[str]:
        return self.by_status[JobStatus.SUCCEEDED] + self.by_status[JobStatus.FAILED]

    def pick(self, pick: int, ids: list[str]) -> RequestLog:
        job = _job(self.sessions, ids[pick % len(ids)])
        assert job is not None
        return job

    @initialize(limit=global_limits, key_budgets=st.lists(key_budgets, min_size=1, max_size=2))
    def configure(self, limit: Decimal, key_budgets: list[Decimal | None]) -> None:
        self.settings = make_test_settings(
            self.database.url,
            monthly_budget_limit=limit,
            job_lease_s=LEASE_S,
            job_max_age_s=MAX_AGE_S,
            job_max_runs=MAX_RUNS,
        )
        with self.sessions.begin() as session:
            for index, monthly_budget in enumerate(key_budgets):
                row, _ = api_keys.create(session, name=f"key {index}", monthly_budget=monthly_budget)
                self.requesters.append(lifecycle.Requester(row.id, row.monthly_budget))

    def requester(self, key: int) -> lifecycle.Requester | None:
        return None if key < 0 or not self.requesters else self.requesters[key % len(self.requesters)]

    @rule(
        prompt=prompts,
        max_tokens=token_limits,
        tier=tiers,
        pressure=st.sampled_from(["fail", "downgrade"]),
        key=keys,
        alone=st.booleans(),
    )
    def create_job(self, prompt: str, max_tokens: int, tier: str | None, pressure: str, key: int, alone: bool) -> None:
        """A prompt arrives, with or without an API key; it is accepted exactly when its bound fits.

        `alone`: as the web tier accepts a request without an Idempotency-Key (one statement on PostgreSQL).
        """
        requester = self.requester(key)
        request = lifecycle.JobRequest(prompt=prompt, max_tokens=max_tokens, tier=tier, on_budget_pressure=pressure)
        before = _snapshot(self.sessions)
        expected = self.fitting_bound(request, requester)
        try:
            with self.sessions() as session:
                job_id = lifecycle.create_and_commit(
                    session,
                    alone=alone,
                    request=request,
                    catalog=self.catalog,
                    settings=self.settings,
                    requester=requester,
                ).id
        except BudgetExceeded:
            event(f"create: refused ({pressure})")
            assert expected is None, f"refused although {expected} fits"
            assert _snapshot(self.sessions) == before
            return
        event(f"create: accepted ({pressure}, ceiling {expected and expected[1]})")
        assert expected is not None, "accepted although no bound fits"
        job = _job(self.sessions, job_id)
        assert job is not None
        assert (job.reserved_cost, job.max_tier) == expected
        self.order[job_id] = len(self.order)
        self.created += 1

    def remaining(self, requester: lifecycle.Requester | None) -> list[Decimal]:
        """Return what is left this month in each scope a request of `requester` is charged to."""
        limit = self.settings.monthly_budget_limit
        scopes = [(budget.GLOBAL_SCOPE, limit)]
        if requester is not None:
            own = requester.monthly_budget
            scopes.append((budget.key_scope(requester.api_key_id), limit if own is None else own))
        period = budget.Period.of(utcnow())
        with self.sessions() as session:
            ledgers = _ledgers(session)
        left = []
        for scope, scope_limit in scopes:
            _, spent, reserved, _ = ledgers.get((scope, period.year, period.month), (scope_limit, 0, 0, 0))
            left.append(scope_limit - spent - reserved)
        return left

    def bound(self, request: lifecycle.JobRequest, *, ceiling: str | None = None) -> Decimal:
        """Return the most `request` may cost under `ceiling`: the documented reservation bound."""
        pinned = request.tier is not None
        return budget.reservation_bound(
            catalog=self.catalog,
            tiers=policy.candidate_tiers(catalog=self.catalog, model=None, tier=request.tier),
            prompt=request.prompt,
            max_tokens=request.max_tokens,
            escalation=self.settings.escalation_enabled and not pinned,
            max_tier=ceiling,
        )

    def fitting_bound(
        self, request: lifecycle.JobRequest, requester: lifecycle.Requester | None
    ) -> tuple[Decimal, str | None] | None:
        """Return the (bound, ceiling) create must reserve: the first ceiling whose bound fits every scope."""
        remaining = self.remaining(requester)
        ceilings: list[str | None] = [None]
        if request.on_budget_pressure == "downgrade" and request.tier is None:
            ceilings += list(reversed(self.catalog.tiers[:-1]))
        for ceiling in ceilings:
            bound = self.bound(request, ceiling=ceiling)
            if all(bound <= left for left in remaining):
                return bound, ceiling
        return None

    @rule(items=st.lists(st.tuples(prompts, token_limits, tiers), min_size=1, max_size=4), key=keys)
    def create_batch(self, items: list[tuple[str, int, str | None]], key: int) -> None:
        """Several prompts arrive as one batch: all are reserved at once, or none."""
        requester = self.requester(key)
        requests = [lifecycle.JobRequest(prompt=p, max_tokens=m, tier=t) for p, m, t in items]
        total = sum((self.bound(request) for request in requests), Decimal(0))
        fits = all(total <= left for left in self.remaining(requester))
        before = _snapshot(self.sessions)
        try:
            with self.sessions.begin() as session:
                _, rows = batches.create(
                    session, requests=requests, catalog=self.catalog, settings=self.settings, requester=requester
                )
                ids = [row.id for row in rows]
        except BudgetExceeded:
            event("batch: refused")
            assert not fits, f"batch refused although {total} fits"
            assert _snapshot(self.sessions) == before
            return
        event("batch: accepted")
        assert fits, "batch accepted although it does not fit"
        for job_id in ids:
            self.order[job_id] = len(self.order)
        self.created += len(ids)

    @precondition(lambda self: self.unfinished())
    @rule(pick=picks, whole_batch=st.booleans())
    def cancel(self, pick: int, whole_batch: bool) -> None:
        """A client cancels a job, or its whole batch: what has not started ends, its reservation unspent."""
        job = self.pick(pick, self.unfinished())
        if whole_batch and job.batch_id is not None:
            self.cancel_batch(job.batch_id)
            return
        before = _snapshot(self.sessions)
        try:
            with self.sessions.begin() as session:
                finished = lifecycle.cancel(session, job_id=job.id)
        except NotCancellable:
            event(f"cancel: {job.status} refused")
            assert job.status is not JobStatus.QUEUED
            assert _snapshot(self.sessions) == before
            return
        event("cancel: queued")
        assert job.status is JobStatus.QUEUED
        after = _job(self.sessions, job.id)
        assert after is not None
        assert (finished.status, after.status, after.cost, after.settled) == (
            JobStatus.FAILED,
            JobStatus.FAILED,
            Decimal(0),
            True,
        )

    def cancel_batch(self, batch_id: str) -> None:
        with self.sessions() as session:
            batch_jobs = session.scalars(select(RequestLog).where(RequestLog.batch_id == batch_id)).all()
        queued = {job.id for job in batch_jobs if job.status is JobStatus.QUEUED}
        with self.sessions.begin() as session:
            cancelled = batches.cancel(session, batch_id=batch_id)
        event(f"cancel batch: {len(cancelled)} of {len(batch_jobs)}")
        assert set(cancelled) == queued
        for job_id in queued:
            after = _job(self.sessions, job_id)
            assert after is not None
            assert (after.status, after.cost, after.settled) == (JobStatus.FAILED, Decimal(0), True)

    @precondition(lambda self: self.unfinished())
    @rule(pick=picks, script=scripts, share=shares, meanwhile=st.sampled_from(MEANWHILE))
    def run_job(self, pick: int, script: list[str], share: tuple[int, int], meanwhile: str) -> None:
        """A worker runs an unfinished job; while its upstream call is in flight, `meanwhile` happens."""
        job = self.pick(pick, self.unfinished())
        fake, expected = _scripted_client(
            self.catalog,
            script,
            job=job,
            share=share,
            attempts=self.settings.upstream_max_attempts,
            meanwhile=functools.partial(self.interrupt, job.id, meanwhile),
        )
        before = _snapshot(self.sessions)
        try:
            result = runs.run(job.id, deps=self.deps(fake))
        except _WorkerDied:
            event("run: the worker died mid-call")
            after = _job(self.sessions, job.id)
            assert after is not None and after.status is JobStatus.RUNNING
            return
        event(f"run: {job.status} -> {getattr(result, 'value', type(result).__name__)} ({meanwhile})")
        if job.status is JobStatus.RUNNING and job.lease_expires_at is not None and job.lease_expires_at > utcnow():
            assert isinstance(result, runs.Busy) and fake.calls == []
            assert _snapshot(self.sessions) == before
            return
        if fake.interrupted and meanwhile in ("reaped", "taken over", "taken, dies"):
            # Another run or the reaper owns the job now: this run's outcome is dropped, whether or not
            # the new owner has finished.
            assert result is None
            assert _snapshot(self.sessions) == self.interrupted_at
            return
        status, cost = expected()
        after = _job(self.sessions, job.id)
        assert after is not None
        assert (result, after.status, after.cost, after.settled) == (status, status, cost, True)

    def interrupt(self, job_id: str, meanwhile: str) -> None:
        """Do `meanwhile` to a job whose run is waiting on its upstream call; the ledger must hold throughout."""
        self.ledger_matches_the_jobs()
        if meanwhile.startswith("worker dies"):
            if meanwhile == "worker dies, long ago":
                self.lapse(job_id)
            raise _WorkerDied
        if meanwhile == "reaped":
            # The reaper's clock is past the lease and the job's age: it fails the job under the run.
            self.sweep(MAX_AGE_S + LEASE_S + 1)
            after = _job(self.sessions, job_id)
            assert after is not None and after.status is JobStatus.FAILED
        elif meanwhile == "taken over":
            # The lease lapses and another worker runs the job to the end.
            self.lapse(job_id)
            job = _job(self.sessions, job_id)
            assert job is not None
            fake, expected = _scripted_client(
                self.catalog, ["fluent"] * 8, job=job, share=(100, 100), attempts=self.settings.upstream_max_attempts
            )
            result = runs.run(job_id, deps=self.deps(fake))
            status, cost = expected()
            after = _job(self.sessions, job_id)
            assert after is not None
            # It fails only if what is left of its reservation, after the lost call, cannot pay for an answer.
            assert (result, after.status, after.cost) == (status, status, cost)
        elif meanwhile == "taken, dies":
            # The lease lapses; another worker claims the job and dies mid-call, so it is still running. Unless
            # what is left of the reservation after the lost call cannot pay for another call: the new run then
            # fails the job without calling anyone.
            self.lapse(job_id)
            dying = _InterleavingClient(meanwhile=_die)
            try:
                runs.run(job_id, deps=self.deps(dying))
            except _WorkerDied:
                after = _job(self.sessions, job_id)
                assert after is not None and after.status is JobStatus.RUNNING
            else:
                after = _job(self.sessions, job_id)
                assert not dying.interrupted and after is not None and after.status is JobStatus.FAILED
        self.ledger_matches_the_jobs()
        self.interrupted_at = _snapshot(self.sessions)

    def lapse(self, job_id: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(RequestLog)
                .where(RequestLog.id == job_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )

    @precondition(lambda self: self.by_status[JobStatus.RUNNING])
    @rule(pick=picks)
    def lapse_lease(self, pick: int) -> None:
        """Time passes: the lease of a running job runs out, as if its worker went silent long ago."""
        self.lapse(self.pick(pick, self.by_status[JobStatus.RUNNING]).id)

    @precondition(lambda self: self.unfinished())
    @rule(pick=picks, whole_batch=st.booleans())
    def withdraw(self, pick: int, whole_batch: bool) -> None:
        """The web tier could not enqueue a job (or a batch) and takes it back, unless a worker has it."""
        job = self.pick(pick, self.unfinished())
        if whole_batch and job.batch_id is not None:
            self.withdraw_batch(job.batch_id)
            return
        before = _snapshot(self.sessions)
        with self.sessions.begin() as session:
            lifecycle.withdraw(session, job_id=job.id)
        event(f"withdraw: {job.status}")
        if job.status is JobStatus.QUEUED:
            assert _job(self.sessions, job.id) is None
            self.withdrawn += 1
        else:
            assert _snapshot(self.sessions) == before

    def withdraw_batch(self, batch_id: str) -> None:
        with self.sessions() as session:
            batch_jobs = session.scalars(select(RequestLog).where(RequestLog.batch_id == batch_id)).all()
        if any(job.status is not JobStatus.QUEUED for job in batch_jobs):
            # The web tier withdraws a batch only when none of it was sent; the test below covers
            # withdrawing a partly started batch.
            return
        with self.sessions.begin() as session:
            batches.withdraw(session, batch_id=batch_id)
        event("withdraw batch")
        assert all(_job(self.sessions, job.id) is None for job in batch_jobs)
        self.withdrawn += len(batch_jobs)

    @precondition(lambda self: self.unfinished())
    @rule(ahead=st.sampled_from(SWEEP_AHEAD_S))
    def reap(self, ahead: int) -> None:
        """The reaper runs, its clock `ahead` seconds past the wall clock."""
        self.sweep(ahead)

    def sweep(self, ahead: int) -> None:
        """Sweep; exactly the stale jobs are failed (out of runs or too old) or requeued, failures settled."""
        now = utcnow() + timedelta(seconds=ahead)
        lease = timedelta(seconds=LEASE_S)
        with self.sessions() as session:
            before = {j.id: j for j in session.scalars(select(RequestLog))}
        expected_failed, expected_requeued = set(), set()
        for job in before.values():
            stale = (job.status is JobStatus.RUNNING and job.lease_expires_at < now) or (
                job.status is JobStatus.QUEUED and (job.enqueued_at is None or job.enqueued_at < now - lease)
            )
            if not stale:
                continue
            runs_out = job.status is JobStatus.RUNNING and job.run_count >= MAX_RUNS
            too_old = job.created_at < now - timedelta(seconds=MAX_AGE_S)
            (expected_failed if runs_out or too_old else expected_requeued).add(job.id)
        swept = reaper.sweep(sessions=self.sessions, settings=self.settings, now=now)
        event(f"sweep +{ahead}s: {'some' if swept.requeued else 'none'} requeued")
        failed = {finished.job_id for finished in swept.failed}
        requeued = {job_id for job_id, _ in swept.requeued}
        assert (failed, requeued) == (expected_failed, expected_requeued)
        for job_id in expected_failed:
            after = _job(self.sessions, job_id)
            assert after is not None
            # Charged what its lost runs' calls may have cost, at their bounds.
            charged = before[job_id].unconfirmed_cost + before[job_id].in_flight_cost
            assert (after.status, after.cost, after.settled) == (JobStatus.FAILED, charged, True)
            assert (after.unconfirmed_cost, after.in_flight_cost) == (charged, 0)
            event(f"sweep: failed as {after.error_code}")

    @precondition(lambda self: self.finished())
    @rule(pick=picks)
    def repeat_on_finished_job(self, pick: int) -> None:
        """Redelivering, reaping or withdrawing a finished job changes nothing: it was settled exactly once."""
        job = self.pick(pick, self.finished())
        before = _snapshot(self.sessions)
        assert runs.run(job.id, deps=self.deps(FakeLLMClient())) is None
        far = utcnow() + timedelta(seconds=MAX_AGE_S * 2)
        lease = timedelta(seconds=LEASE_S)
        assert not reaper.fail(self.sessions, job_id=job.id, code="expired", message="again", now=far, lease=lease)
        with self.sessions.begin() as session:
            lifecycle.withdraw(session, job_id=job.id)
        assert _snapshot(self.sessions) == before

    @invariant()
    def ledger_matches_the_jobs(self) -> None:
        """Every scope's row is the sum of its jobs: reserved for the unfinished, spent for the finished."""
        with self.sessions() as session:
            ledgers = _ledgers(session)
            job_rows = sorted(session.scalars(select(RequestLog)), key=lambda j: self.order[j.id])
        expected: dict[LedgerKey, list[Decimal | int]] = {}
        for job in job_rows:
            terminal = job.status.is_terminal
            assert Decimal(0) <= job.cost <= job.reserved_cost, job.id
            assert job.settled is terminal, job.id
            assert terminal or job.cost == 0, job.id
            assert job.unconfirmed_cost + job.in_flight_cost <= job.reserved_cost, job.id
            assert not terminal or (job.in_flight_cost == 0 and job.unconfirmed_cost <= job.cost), job.id
            for scope in budget.scopes_of(job.api_key_id):
                key = (scope, job.budget_year, job.budget_month)
                totals = expected.setdefault(key, [Decimal(0), Decimal(0), 0])
                if terminal:
                    totals[0] += job.cost
                else:
                    totals[1] += job.reserved_cost
                totals[2] += 1
        assert set(expected) <= set(ledgers)
        for key, (limit, spent, reserved, count) in ledgers.items():
            assert spent >= 0 and reserved >= 0, key
            assert spent + reserved <= limit, key
            assert [spent, reserved, count] == expected.get(key, [Decimal(0), Decimal(0), 0]), key
        global_count = sum(row[3] for (scope, _, _), row in ledgers.items() if scope == budget.GLOBAL_SCOPE)
        assert global_count == self.created - self.withdrawn == len(job_rows)
        # Refresh the view the preconditions and picks use (the rules just changed the jobs).
        self.by_status = {status: [j.id for j in job_rows if j.status is status] for status in JobStatus}


def test_ledger_invariant_holds_under_random_interleavings_on_sqlite() -> None:
    run_state_machine_as_test(LedgerMachine, settings=SQLITE_MACHINE)


def test_ledger_invariant_holds_under_random_interleavings_on_postgres(postgres_engine: Engine) -> None:
    class OnPostgres(LedgerMachine):
        open_database = staticmethod(lambda: _truncated_postgres(postgres_engine))

    run_state_machine_as_test(OnPostgres, settings=POSTGRES_MACHINE)


@dataclass(frozen=True)
class _Race:
    """N identical requests racing for a budget that fits only `fits_global` (and `fits_key`) of them."""

    threads: int
    prompt: str
    max_tokens: int
    tier: str | None
    fits_global: int
    global_slack: int
    fits_key: int | None
    key_slack: int
    # The month's ledger rows exist before the race, so that requests can be accepted in one statement.
    warm: bool


races = st.builds(
    _Race,
    threads=st.integers(min_value=2, max_value=8),
    prompt=prompts,
    max_tokens=token_limits,
    tier=st.sampled_from([None, "cheap", "mid", "high"]),
    fits_global=st.integers(min_value=0, max_value=8),
    global_slack=st.integers(min_value=0, max_value=999),
    fits_key=st.one_of(st.none(), st.integers(min_value=0, max_value=8)),
    key_slack=st.integers(min_value=0, max_value=999),
    warm=st.booleans(),
)


def _limit(bound: Decimal, fits: int, slack: int) -> Decimal:
    # Slack is a share (per mille) of one more bound, truncated to whole nano-dollars: never a whole bound.
    return bound * fits + from_nanos(int(bound.scaleb(9) * slack // 1000))


def _race_creates(database: _Database, race: _Race) -> None:
    catalog = _catalog()
    bound = budget.reservation_bound(
        catalog=catalog,
        tiers=policy.candidate_tiers(catalog=catalog, model=None, tier=race.tier),
        prompt=race.prompt,
        max_tokens=race.max_tokens,
        escalation=race.tier is None,
    )
    config = make_test_settings(database.url, monthly_budget_limit=_limit(bound, race.fits_global, race.global_slack))
    sessions = make_sessionmaker(database.engine)
    requester = None
    if race.fits_key is not None:
        with sessions.begin() as session:
            key_budget = _limit(bound, race.fits_key, race.key_slack)
            row, _ = api_keys.create(session, name="racer", monthly_budget=key_budget)
            requester = lifecycle.Requester(row.id, row.monthly_budget)
    request = lifecycle.JobRequest(prompt=race.prompt, max_tokens=race.max_tokens, tier=race.tier)
    if race.warm:
        with sessions.begin() as session:
            for scope in lifecycle.limits_of(config, requester):
                budget.reserve(session, scope=scope.scope, period=budget.Period.of(utcnow()), amount=Decimal(0),
                               limit=scope.monthly,
                               count=0)  # fmt: skip
    start = threading.Barrier(race.threads)
    outcomes: list[object] = []
    lock = threading.Lock()

    def submit() -> None:
        start.wait()
        try:
            with sessions() as session:
                lifecycle.create_and_commit(
                    session, alone=True, request=request, catalog=catalog, settings=config, requester=requester
                )
            outcome: object = "accepted"
        except BudgetExceeded:
            outcome = "refused"
        except Exception as exc:
            outcome = exc
        with lock:
            outcomes.append(outcome)

    pool = [threading.Thread(target=submit) for _ in range(race.threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    fits = race.fits_global if race.fits_key is None else min(race.fits_global, race.fits_key)
    accepted = min(race.threads, fits)
    assert outcomes.count("accepted") == accepted
    with sessions() as session:
        ledgers = _ledgers(session)
        assert len(session.scalars(select(RequestLog)).all()) == accepted
    for key, (limit, spent, reserved, count) in ledgers.items():
        assert spent == 0 and reserved >= 0 and spent + reserved <= limit, key
        assert (reserved, count) == (bound * accepted, accepted), key


@settings(COMMON, max_examples=25)
@given(race=races)
def test_concurrent_creates_accept_exactly_what_fits_on_sqlite(race: _Race) -> None:
    database = _fresh_sqlite()
    try:
        _race_creates(database, race)
    finally:
        database.close()


@settings(COMMON, max_examples=6)
@given(race=races)
def test_concurrent_creates_accept_exactly_what_fits_on_postgres(postgres_engine: Engine, race: _Race) -> None:
    _race_creates(_truncated_postgres(postgres_engine), race)


@settings(COMMON, max_examples=5)
@given(size=st.integers(min_value=2, max_value=4), started=st.integers(min_value=1, max_value=3))
def test_withdrawing_a_batch_releases_its_queued_jobs_even_after_one_started(size: int, started: int) -> None:
    database = _fresh_sqlite()
    try:
        catalog = _catalog()
        config = make_test_settings(database.url, monthly_budget_limit=Decimal(1))
        sessions = make_sessionmaker(database.engine)
        requests = [lifecycle.JobRequest(prompt="what is the capital of France", max_tokens=50)] * size
        with sessions.begin() as session:
            batch, rows = batches.create(session, requests=requests, catalog=catalog, settings=config)
            ids = [row.id for row in rows]
        started = min(started, size - 1)
        deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=config, client=FakeLLMClient())
        for job_id in ids[:started]:
            # FakeLLMClient's default answer (12 + 24 tokens) is within this job's bound.
            assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
        with sessions.begin() as session:
            batches.withdraw(session, batch_id=batch.id)
        with sessions() as session:
            left = session.scalars(select(RequestLog)).all()
            period = budget.Period.of(utcnow())
            ledger = _ledgers(session)[(budget.GLOBAL_SCOPE, period.year, period.month)]
        assert sorted(job.id for job in left) == sorted(ids[:started])
        assert ledger[1:] == (sum((job.cost for job in left), Decimal(0)), Decimal(0), started)
    finally:
        database.close()
