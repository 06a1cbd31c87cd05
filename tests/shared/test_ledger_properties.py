"""The ledger stays exact under random interleavings of accepting, running, withdrawing and reaping jobs.

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
from typing import ClassVar

from hypothesis import HealthCheck
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

from shared import api_keys
from shared import budget
from shared import jobs
from shared import reaper
from shared import routing
from shared.catalog import Catalog
from shared.catalog import load_catalog
from shared.config import DEFAULT_CATALOG_PATH
from shared.config import Settings
from shared.db.base import Base
from shared.db.models import JobStatus
from shared.db.models import MonthlyBudget
from shared.db.models import RequestLog
from shared.db.session import make_engine
from shared.db.session import make_sessionmaker
from shared.db.types import from_nanos
from shared.db.types import utcnow
from shared.errors import BudgetExceeded
from shared.errors import PermanentLLMError
from shared.errors import TransientLLMError
from tests.conftest import make_test_settings
from tests.support.fakes import FLUENT
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

HEDGE = "I'm not sure, maybe Paris."
LEASE_S = 60
MAX_AGE_S = 3600
MAX_RUNS = 2
# How far ahead of the wall clock a sweep looks: not at all, past every lease, past every job's age.
SWEEP_AHEAD_S = (0, LEASE_S + 1, MAX_AGE_S + LEASE_S + 1)
# Words that move the difficulty score around (and "café"/"naïve" make bytes outnumber characters).
WORDS = ("what is", "capital of", "prove", "derive", "algorithm", "optimize", "the", "café", "naïve", "x", "?")
# What a model does when called: answer well, answer unsure (forcing escalation), or fail.
OUTCOMES = ("fluent", "hedge", "transient", "permanent")
ANSWERS = ("fluent", "hedge")

SQLITE_SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None, derandomize=True, database=None)
POSTGRES_SETTINGS = settings(
    max_examples=6,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

nanos = st.integers(min_value=0, max_value=60_000_000).map(from_nanos)
prompts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
# Token usage as percentages of the bound, often exactly at it: the worst case must still fit.
percent = st.one_of(st.just(100), st.integers(min_value=0, max_value=100))
shares = st.tuples(percent, percent)
scripts = st.lists(st.sampled_from(OUTCOMES), min_size=3, max_size=3)
picks = st.integers(min_value=0, max_value=10_000)

LedgerKey = tuple[str, int, int]
Snapshot = tuple[object, ...]


@functools.cache
def _catalog() -> Catalog:
    return load_catalog(DEFAULT_CATALOG_PATH)


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
            (j.id, j.status, j.run_count, j.cost, j.settled, j.lease_expires_at, j.finished_at) for j in job_rows
        )
        return (tuple(sorted(_ledgers(session).items())), jobs_state)


def _job(sessions: sessionmaker[Session], job_id: str) -> RequestLog | None:
    with sessions() as session:
        return session.get(RequestLog, job_id)


def _scripted_client(
    catalog: Catalog, script: list[str], *, job: RequestLog, share: tuple[int, int], attempts: int
) -> tuple[FakeLLMClient, dict[str, str], tuple[int, int]]:
    """Return a fake whose models answer as `script` says, every answer within the job's token bound."""
    prompt_tokens = budget.estimate_prompt_tokens_bound(job.prompt) * share[0] // 100
    completion_tokens = job.max_tokens * share[1] // 100
    fake = FakeLLMClient()
    behaviour: dict[str, str] = {}
    for outcome, tier in zip(script, catalog.tiers, strict=True):
        model = catalog.model_for_tier(tier).name
        behaviour[model] = outcome
        if outcome in ANSWERS:
            answer = FLUENT if outcome == "fluent" else HEDGE
            fake.script(model, ok(answer, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
        elif outcome == "transient":
            fake.script(model, *[TransientLLMError("503", status_code=503)] * attempts)
        else:
            fake.script(model, PermanentLLMError("400", status_code=400))
    return fake, behaviour, (prompt_tokens, completion_tokens)


def _expected_run(catalog: Catalog, fake: FakeLLMClient, behaviour: dict[str, str], tokens: tuple[int, int]):
    """Return the status and cost a run must record, from the models it called and how they answered."""
    called = list(dict.fromkeys(fake.calls))
    status = JobStatus.SUCCEEDED if behaviour[called[0]] in ANSWERS else JobStatus.FAILED
    cost = sum((catalog.get_model(m).cost(*tokens) for m in called if behaviour[m] in ANSWERS), Decimal(0))
    return status, cost


class LedgerMachine(RuleBasedStateMachine):
    """Jobs are accepted, run, withdrawn, abandoned by dying workers and reaped, in any order."""

    open_database: ClassVar[Callable[[], _Database]] = staticmethod(_fresh_sqlite)

    def __init__(self) -> None:
        super().__init__()
        self.database = self.open_database()
        self.sessions = make_sessionmaker(self.database.engine)
        self.catalog = _catalog()
        self.settings: Settings = make_test_settings(self.database.url)
        self.requesters: list[jobs.Requester] = []
        self.accepted: set[str] = set()
        self.created = 0
        self.withdrawn = 0
        self.abandoned: dict[str, jobs.Claim] = {}

    def teardown(self) -> None:
        self.database.close()

    def deps(self, client: FakeLLMClient) -> jobs.RunDeps:
        return jobs.RunDeps(
            sessions=self.sessions,
            catalog=self.catalog,
            settings=self.settings,
            client=client,
            on_alert=lambda alert: None,
            sleep=lambda seconds: None,
        )

    def pick(self, pick: int, *, where: Callable[[RequestLog], bool] = lambda job: True) -> RequestLog | None:
        with self.sessions() as session:
            found = [j for j in session.scalars(select(RequestLog).order_by(RequestLog.created_at, RequestLog.id))]
        found = [job for job in found if where(job)]
        return found[pick % len(found)] if found else None

    @initialize(limit=nanos, key_budgets=st.lists(st.one_of(st.none(), nanos), min_size=1, max_size=2))
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
                self.requesters.append(jobs.Requester(row.id, row.monthly_budget))

    @rule(
        prompt=prompts,
        max_tokens=st.integers(min_value=1, max_value=400),
        tier=st.sampled_from([None, None, "cheap", "mid", "high"]),
        pressure=st.sampled_from(["fail", "downgrade"]),
        key=st.integers(min_value=-1, max_value=1),
    )
    def create_job(self, prompt: str, max_tokens: int, tier: str | None, pressure: str, key: int) -> None:
        requester = None if key < 0 or not self.requesters else self.requesters[key % len(self.requesters)]
        request = jobs.JobRequest(prompt=prompt, max_tokens=max_tokens, tier=tier, on_budget_pressure=pressure)
        before = _snapshot(self.sessions)
        expected = self.fitting_bound(request, requester)
        try:
            with self.sessions.begin() as session:
                job_id = jobs.create(
                    session, request=request, catalog=self.catalog, settings=self.settings, requester=requester
                ).id
        except BudgetExceeded:
            assert expected is None, f"refused although {expected} fits"
            assert _snapshot(self.sessions) == before
            return
        assert expected is not None, "accepted although no bound fits"
        job = _job(self.sessions, job_id)
        assert job is not None
        assert (job.reserved_cost, job.max_tier) == expected
        self.accepted.add(job_id)
        self.created += 1

    def fitting_bound(self, request: jobs.JobRequest, requester: jobs.Requester | None):
        """Return the (bound, ceiling) create must reserve: the first ceiling that fits every scope."""
        limit = self.settings.monthly_budget_limit
        scopes = [(budget.GLOBAL_SCOPE, limit)]
        if requester is not None:
            own = requester.monthly_budget
            scopes.append((budget.key_scope(requester.api_key_id), limit if own is None else own))
        period = budget.Period.of(utcnow())
        with self.sessions() as session:
            ledgers = _ledgers(session)
        remaining = []
        for scope, scope_limit in scopes:
            _, spent, reserved, _ = ledgers.get((scope, period.year, period.month), (scope_limit, 0, 0, 0))
            remaining.append(scope_limit - spent - reserved)
        pinned = request.tier is not None
        ceilings: list[str | None] = [None]
        if request.on_budget_pressure == "downgrade" and not pinned:
            ceilings += list(reversed(self.catalog.tiers[:-1]))
        for ceiling in ceilings:
            bound = budget.reservation_bound(
                catalog=self.catalog,
                tiers=routing.candidate_tiers(catalog=self.catalog, model=None, tier=request.tier),
                prompt=request.prompt,
                max_tokens=request.max_tokens,
                escalation=self.settings.escalation_enabled and not pinned,
                max_tier=ceiling,
            )
            if all(bound <= left for left in remaining):
                return bound, ceiling
        return None

    @precondition(lambda self: self.accepted)
    @rule(pick=picks, script=scripts, share=shares)
    def run_job(self, pick: int, script: list[str], share: tuple[int, int]) -> None:
        """A worker takes the job's message and runs it (or finds it busy or finished)."""
        job = self.pick(pick)
        assert job is not None
        fake, behaviour, tokens = _scripted_client(
            self.catalog, script, job=job, share=share, attempts=self.settings.upstream_max_attempts
        )
        before = _snapshot(self.sessions)
        result = jobs.run(job.id, deps=self.deps(fake))
        if job.status.is_terminal:
            assert result is None and fake.calls == []
            assert _snapshot(self.sessions) == before
            return
        if job.status is JobStatus.RUNNING and job.lease_expires_at is not None and job.lease_expires_at > utcnow():
            assert isinstance(result, jobs.Busy) and fake.calls == []
            assert _snapshot(self.sessions) == before
            return
        status, cost = _expected_run(self.catalog, fake, behaviour, tokens)
        after = _job(self.sessions, job.id)
        assert after is not None
        assert (result, after.status, after.cost, after.settled) == (status, status, cost, True)

    @precondition(lambda self: self.accepted)
    @rule(pick=picks)
    def abandon_job(self, pick: int) -> None:
        """A worker claims the job and dies before finishing it; its lease runs on."""
        job = self.pick(pick)
        assert job is not None
        claim = jobs._claim(job.id, deps=self.deps(FakeLLMClient()))
        claimable = job.status is JobStatus.QUEUED or (
            job.status is JobStatus.RUNNING and job.lease_expires_at is not None and job.lease_expires_at < utcnow()
        )
        assert isinstance(claim, jobs.Claim) is claimable
        if isinstance(claim, jobs.Claim):
            self.abandoned[job.id] = claim

    @rule(pick=picks)
    def lapse_lease(self, pick: int) -> None:
        """Let the lease of a running job run out, as if its worker went silent long ago."""
        job = self.pick(pick, where=lambda j: j.status is JobStatus.RUNNING)
        if job is None:
            return
        with self.sessions.begin() as session:
            session.execute(
                update(RequestLog)
                .where(RequestLog.id == job.id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )

    @precondition(lambda self: self.abandoned)
    @rule(pick=picks, script=scripts, share=shares)
    def finish_late(self, pick: int, script: list[str], share: tuple[int, int]) -> None:
        """A worker thought dead comes back and tries to record its outcome."""
        job_id = sorted(self.abandoned)[pick % len(self.abandoned)]
        claim = self.abandoned.pop(job_id)
        job = _job(self.sessions, job_id)
        assert job is not None
        fake, _, _ = _scripted_client(
            self.catalog, script, job=job, share=share, attempts=self.settings.upstream_max_attempts
        )
        deps = self.deps(fake)
        outcome = jobs._route_and_call(claim, deps=deps)
        before = _snapshot(self.sessions)
        finished = jobs._finish(claim, outcome, deps=deps)
        still_ours = job.status is JobStatus.RUNNING and job.run_count == claim.run_count
        assert (finished is not None) is still_ours
        if finished is None:
            assert _snapshot(self.sessions) == before
            return
        after = _job(self.sessions, job_id)
        assert after is not None
        assert (after.status, after.cost, after.settled) == (finished[0], outcome.cost, True)

    @precondition(lambda self: self.accepted)
    @rule(pick=picks)
    def withdraw_job(self, pick: int) -> None:
        """The web tier could not enqueue the job and takes it back (a no-op once it left the queue)."""
        job = self.pick(pick)
        assert job is not None
        before = _snapshot(self.sessions)
        with self.sessions.begin() as session:
            jobs.withdraw(session, job_id=job.id)
        if job.status is JobStatus.QUEUED:
            assert _job(self.sessions, job.id) is None
            self.accepted.remove(job.id)
            self.withdrawn += 1
        else:
            assert _snapshot(self.sessions) == before

    @rule(ahead=st.sampled_from(SWEEP_AHEAD_S))
    def sweep(self, ahead: int) -> None:
        """The reaper runs, its clock `ahead` seconds past the wall clock."""
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
        assert (set(swept.failed), set(swept.requeued)) == (expected_failed, expected_requeued)
        for job_id in expected_failed:
            after = _job(self.sessions, job_id)
            assert after is not None
            assert (after.status, after.cost, after.settled) == (JobStatus.FAILED, before[job_id].cost, True)

    @rule(pick=picks)
    def repeat_on_finished_job(self, pick: int) -> None:
        """Redelivering or reaping a finished job changes nothing: it was settled exactly once."""
        job = self.pick(pick, where=lambda j: j.status.is_terminal)
        if job is None:
            return
        before = _snapshot(self.sessions)
        assert jobs.run(job.id, deps=self.deps(FakeLLMClient())) is None
        far = utcnow() + timedelta(seconds=MAX_AGE_S * 2)
        lease = timedelta(seconds=LEASE_S)
        assert not reaper.fail(self.sessions, job_id=job.id, code="expired", message="again", now=far, lease=lease)
        assert _snapshot(self.sessions) == before

    @invariant()
    def ledger_matches_the_jobs(self) -> None:
        with self.sessions() as session:
            ledgers = _ledgers(session)
            job_rows = session.scalars(select(RequestLog)).all()
        expected: dict[LedgerKey, list] = {}
        for job in job_rows:
            assert Decimal(0) <= job.cost <= job.reserved_cost, job.id
            assert job.settled is job.status.is_terminal, job.id
            if not job.status.is_terminal:
                assert job.cost == 0, job.id
            for scope in budget.scopes_of(job.api_key_id):
                totals = expected.setdefault((scope, job.budget_year, job.budget_month), [Decimal(0), Decimal(0), 0])
                totals[0 if job.status.is_terminal else 1] += job.cost if job.status.is_terminal else job.reserved_cost
                totals[2] += 1
        assert set(expected) <= set(ledgers)
        for key, (limit, spent, reserved, count) in ledgers.items():
            assert spent >= 0 and reserved >= 0, key
            assert spent + reserved <= limit, key
            assert [spent, reserved, count] == expected.get(key, [Decimal(0), Decimal(0), 0]), key
        global_count = sum(count for (scope, _, _), (*_, count) in ledgers.items() if scope == budget.GLOBAL_SCOPE)
        assert global_count == self.created - self.withdrawn == len(job_rows) == len(self.accepted)


def test_ledger_invariant_holds_under_random_interleavings_on_sqlite() -> None:
    run_state_machine_as_test(LedgerMachine, settings=SQLITE_SETTINGS)


def test_ledger_invariant_holds_under_random_interleavings_on_postgres(postgres_engine: Engine) -> None:
    class OnPostgres(LedgerMachine):
        open_database = staticmethod(lambda: _truncated_postgres(postgres_engine))

    run_state_machine_as_test(OnPostgres, settings=POSTGRES_SETTINGS)


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


races = st.builds(
    _Race,
    threads=st.integers(min_value=2, max_value=8),
    prompt=prompts,
    max_tokens=st.integers(min_value=1, max_value=400),
    tier=st.sampled_from([None, "cheap", "mid", "high"]),
    fits_global=st.integers(min_value=0, max_value=8),
    global_slack=st.integers(min_value=0, max_value=999),
    fits_key=st.one_of(st.none(), st.integers(min_value=0, max_value=8)),
    key_slack=st.integers(min_value=0, max_value=999),
)


def _limit(bound: Decimal, fits: int, slack: int) -> Decimal:
    # Slack is a share (per mille) of one more bound, truncated to whole nano-dollars: never a whole bound.
    return bound * fits + from_nanos(int(bound.scaleb(9) * slack // 1000))


def _race_creates(database: _Database, race: _Race) -> None:
    catalog = _catalog()
    bound = budget.reservation_bound(
        catalog=catalog,
        tiers=routing.candidate_tiers(catalog=catalog, model=None, tier=race.tier),
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
            requester = jobs.Requester(row.id, row.monthly_budget)
    request = jobs.JobRequest(prompt=race.prompt, max_tokens=race.max_tokens, tier=race.tier)
    start = threading.Barrier(race.threads)
    outcomes: list[object] = []
    lock = threading.Lock()

    def submit() -> None:
        start.wait()
        try:
            with sessions.begin() as session:
                jobs.create(session, request=request, catalog=catalog, settings=config, requester=requester)
            outcome: object = "accepted"
        except BudgetExceeded:
            outcome = "refused"
        except Exception as exc:  # noqa: BLE001  (re-raised below, in the test's own thread)
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


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(race=races)
def test_concurrent_creates_accept_exactly_what_fits_on_sqlite(race: _Race) -> None:
    database = _fresh_sqlite()
    try:
        _race_creates(database, race)
    finally:
        database.close()


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(race=races)
def test_concurrent_creates_accept_exactly_what_fits_on_postgres(postgres_engine: Engine, race: _Race) -> None:
    _race_creates(_truncated_postgres(postgres_engine), race)
