"""Jobs against rate-limited upstreams: paced by admission, waiting without a worker, failing `rate_limited` only
when their deadline cannot hold the wait; open circuits waited out; every refused model named."""

from __future__ import annotations

import time
from pathlib import Path

import fakeredis
import pytest
import redis

from shared.jobs import dispatch
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.ledger import budget
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.upstream.admission import Admission
from shared.upstream.admission import RateLimits
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.llm_client import OpenAIChatClient
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import make_test_settings
from tests.support.fakes import Clock
from tests.support.fakes import FakeLLMClient
from tests.support.prompts import EASY
from tests.support.sim import running_sim

CHEAP, MID = "gpt-3.5-turbo", "gpt-4"


@pytest.fixture
def admission(real_redis: redis.Redis, clock: Clock) -> Admission:
    return Admission(real_redis, clock=clock)


def _limit(admission: Admission, model: str, *, rpm: int, used: int) -> None:
    """Teach admission `model`'s limit, and use `used` of its turns."""
    admission.learn(model, RateLimits(limit_requests=rpm), throttled=False)
    for _ in range(used):
        admission.take(model, tokens=1, max_wait_s=3600)


def _job(catalog: Catalog, **overrides) -> dispatch.Job:
    values = {"prompt": EASY, "max_tokens": 100, "preference": "balanced", "model": None, "tier": "cheap",
              "max_tier": None, "deadline_s": 30.0, "can_defer": True}  # fmt: skip
    values.update(overrides)
    values.setdefault(
        "reserved_cost",
        budget.reservation_bound(catalog=catalog, tiers=catalog.tiers, prompt=values["prompt"],
                                 max_tokens=values["max_tokens"], escalation=True),
    )  # fmt: skip
    return dispatch.Job(**values)


def _using(catalog, settings, client, *, admission=None, breaker=None, sleeps=None) -> dispatch.Answerer:
    sleep = (lambda _: None) if sleeps is None else sleeps.append
    return dispatch.Answerer(
        catalog=catalog, settings=settings, client=client, breaker=breaker, admission=admission, sleep=sleep
    )


def test_a_job_over_its_models_rate_defers_with_its_turn_reserved(catalog, settings, admission) -> None:
    _limit(admission, CHEAP, rpm=60, used=3)  # the next turn is 3 s away
    fake = FakeLLMClient()
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, admission=admission))
    assert outcome.deferral == dispatch.Deferral(pytest.approx(3.0), admitted=CHEAP)
    assert fake.calls == [] and outcome.attempts == []
    # Back at its turn, the job calls without asking again: its turn was reserved for it.
    back = dispatch.answer(_job(catalog, admitted=CHEAP), using=_using(catalog, settings, fake, admission=admission))
    assert (back.model.name, fake.calls) == (CHEAP, [CHEAP])
    # Nobody took that turn meanwhile: the next caller waits for the one after.
    assert admission.take(CHEAP, tokens=1, max_wait_s=0).wait_s == pytest.approx(4.0)


def test_a_short_wait_is_slept_in_the_worker(catalog, settings, admission, clock) -> None:
    _limit(admission, CHEAP, rpm=120, used=2)  # one turn each 0.5 s, two at once
    sleeps: list[float] = []
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, FakeLLMClient(), admission=admission,
                                                          sleeps=sleeps))  # fmt: skip
    assert outcome.model.name == CHEAP and sleeps == [pytest.approx(0.5)]


def test_a_job_whose_deadline_cannot_hold_the_wait_fails_rate_limited_naming_the_limit(
    catalog, settings, admission
) -> None:
    _limit(admission, CHEAP, rpm=6, used=2)  # the next turn is 20 s away
    fake = FakeLLMClient()
    using = _using(catalog, settings, fake, admission=admission)
    outcome = dispatch.answer(_job(catalog, deadline_s=5.0), using=using)
    assert fake.calls == [] and outcome.deferral is None
    assert outcome.error.code == "rate_limited"
    assert f"{CHEAP}: rate limited by the upstream's requests limit (6/min)" in outcome.error.message
    # Waiting was the choice: the pricier model was not called instead.
    assert [(a.model, a.error_class) for _, a in outcome.attempts] == [(CHEAP, "rate_limited")]


def test_fallback_is_a_choice_that_sends_the_job_to_the_next_model(catalog, settings, admission) -> None:
    _limit(admission, CHEAP, rpm=6, used=2)
    fake = FakeLLMClient()
    outcome = dispatch.answer(
        _job(catalog, on_rate_limit="fallback"), using=_using(catalog, settings, fake, admission=admission)
    )
    assert (outcome.model.name, fake.calls) == (MID, [MID])


def test_a_429_goes_back_to_admission_which_paces_the_retry(catalog, settings, admission) -> None:
    fake = FakeLLMClient()
    throttled = dispatch.TransientLLMError("429", status_code=429, details={"error_class": "rate_limited"})
    throttled.rate_limits = RateLimits(retry_after_s=0.8)
    fake.script(CHEAP, throttled)
    sleeps: list[float] = []
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, admission=admission, sleeps=sleeps))
    # It made a call, so it waits in the worker, for as long as the 429 said, then is answered.
    assert (outcome.model.name, fake.calls) == (CHEAP, [CHEAP, CHEAP])
    assert sleeps == [pytest.approx(0.8)]


def _throttled(retry_after_s: float | None) -> dispatch.TransientLLMError:
    error = dispatch.TransientLLMError("429", status_code=429, details={"error_class": "rate_limited"})
    error.rate_limits = None if retry_after_s is None else RateLimits(retry_after_s=retry_after_s)
    return error


def test_a_waiting_job_outlasts_more_429s_than_the_retry_policys_attempts(catalog, settings, admission) -> None:
    # A 429 is backpressure: the job keeps its place behind its model for as long as its deadline allows, paced
    # each time by what the 429 told admission, instead of failing once the policy's attempts are spent.
    throttles = settings.upstream_max_attempts + 2
    fake = FakeLLMClient()
    fake.script(CHEAP, *[_throttled(0.3) for _ in range(throttles)])
    sleeps: list[float] = []
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, admission=admission, sleeps=sleeps))
    assert outcome.error is None and outcome.model.name == CHEAP
    # Never the pricier model: waiting was the choice.
    assert fake.calls == [CHEAP] * (throttles + 1)
    assert sleeps == [pytest.approx(0.3)] * throttles
    assert outcome.retry_count == throttles


def test_a_job_that_chose_fallback_moves_on_once_the_policys_attempts_are_answered_429(
    catalog, settings, admission
) -> None:
    fake = FakeLLMClient()
    fake.script(CHEAP, *[_throttled(0.3) for _ in range(settings.upstream_max_attempts)])
    outcome = dispatch.answer(
        _job(catalog, on_rate_limit="fallback"), using=_using(catalog, settings, fake, admission=admission)
    )
    assert outcome.model.name == MID
    assert fake.calls == [CHEAP] * settings.upstream_max_attempts + [MID]


class _UnreachableRedis:
    """A Redis client whose every script call fails as a refused connection does, at once."""

    def register_script(self, _script: str) -> object:
        def run(**_: object) -> object:
            raise redis.ConnectionError("connection refused")

        return run


def test_a_waiting_job_backs_off_between_429s_that_admission_cannot_pace(catalog, settings) -> None:
    # Admission's Redis is unreachable (it then admits every call): the retry policy's backoff spaces the calls,
    # so a throttling upstream is never called in a tight loop.
    unreachable = Admission(_UnreachableRedis())  # type: ignore[arg-type]
    backoff = settings.model_copy(update={"upstream_backoff_initial_s": 0.5, "upstream_backoff_max_s": 1.5})
    fake = FakeLLMClient()
    fake.script(CHEAP, *[_throttled(None) for _ in range(4)])
    sleeps: list[float] = []
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, backoff, fake, admission=unreachable, sleeps=sleeps))
    assert outcome.model.name == CHEAP and fake.calls == [CHEAP] * 5
    assert sleeps == [0.5, 1.0, 1.5, 1.5]


def test_a_job_whose_models_circuits_are_all_open_waits_for_the_probe(catalog, settings) -> None:
    clock = Clock()
    breaker = CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=1, cooldown_s=15), clock=clock)
    for model in catalog.model_names:
        breaker.record_failure(breaker.allow(model))
    clock.now += 5
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, FakeLLMClient(), breaker=breaker))
    assert outcome.deferral == dispatch.Deferral(pytest.approx(10.0))
    # With no time to wait, it fails naming every model it tried and why.
    failed = dispatch.answer(
        _job(catalog, deadline_s=2.0), using=_using(catalog, settings, FakeLLMClient(), breaker=breaker)
    )
    assert failed.deferral is None and failed.completion is None
    tried = [name for name in catalog.model_names if name in failed.error.message]
    assert len(tried) >= 2 and "circuit open" in failed.error.message


def test_an_error_names_every_model_tried_and_why(catalog, settings) -> None:
    fake = FakeLLMClient()
    down = dispatch.TransientLLMError(f"{CHEAP}: upstream answered 503", status_code=503,
                                       details={"error_class": "server_error"})  # fmt: skip
    fake.script(CHEAP, *[down] * settings.upstream_max_attempts)
    breaker = CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=1, cooldown_s=60))
    breaker.record_failure(breaker.allow(MID))
    outcome = dispatch.answer(_job(catalog, max_tier="mid"), using=_using(catalog, settings, fake, breaker=breaker))
    assert outcome.completion is None
    assert f"{CHEAP}: upstream answered 503" in outcome.error.message
    assert f"{MID}: circuit open" in outcome.error.message


# Through runs, on SQLite and PostgreSQL: the job row while it waits, and its deadline.


@pytest.fixture
def deps(database_url: str, engine, catalog, admission) -> runs.RunDeps:
    settings = make_test_settings(database_url, escalation_enabled=False, job_lease_s=60)
    return runs.RunDeps(
        sessions=make_sessionmaker(engine), catalog=catalog, settings=settings, client=FakeLLMClient(),
        sleep=lambda _: None, admission=admission,
    )  # fmt: skip


def _submit(deps: runs.RunDeps, **request: object) -> str:
    with deps.sessions.begin() as session:
        return lifecycle.create(
            session, request=lifecycle.JobRequest(prompt=EASY, tier="cheap", **request), catalog=deps.catalog,
            settings=deps.settings,
        ).id  # fmt: skip


def test_a_deferred_job_goes_back_to_its_queue_unclaimed_and_runs_once_at_its_turn(deps, admission) -> None:
    _limit(admission, CHEAP, rpm=60, used=3)
    job_id = _submit(deps)
    before = time.time()
    deferred = runs.run(job_id, deps=deps)
    assert isinstance(deferred, runs.Deferred)
    assert deferred.wait_s == pytest.approx(3.0) and deferred.resume.admitted == CHEAP
    assert deferred.resume.deadline_at == pytest.approx(before + deps.settings.deadline_for(None), abs=2)
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        assert (job.status, job.run_count, job.lease_expires_at, job.in_flight_cost) == (JobStatus.QUEUED, 0, None, 0)
    assert runs.run(job_id, deps=deps, resume=deferred.resume) is JobStatus.SUCCEEDED
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        attempts = session.query(RequestAttempt).filter_by(job_id=job_id).all()
        # One run, one call: the wait left no lost run behind, and nothing was charged for it.
        assert (job.run_count, job.settled) == (1, True)
        assert [(a.model, a.outcome) for a in attempts] == [(CHEAP, "ok")]
    assert deps.client.calls == [CHEAP]


def test_a_waiting_jobs_deadline_counts_from_its_first_run_not_from_the_retry(deps, admission) -> None:
    _limit(admission, CHEAP, rpm=6, used=1)  # its turn is 10 s away
    job_id = _submit(deps, deadline_s=30)
    deferred = runs.run(job_id, deps=deps)
    assert isinstance(deferred, runs.Deferred)
    # Back with 5 s of its deadline left (it was kept waiting longer than asked), behind a model 20 s away.
    _limit(admission, CHEAP, rpm=6, used=3)
    late = runs.Resume(deadline_at=time.time() + 5)
    assert runs.run(job_id, deps=deps, resume=late) is JobStatus.FAILED
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        assert job.error_code == "rate_limited" and "requests limit (6/min)" in job.error_message
        assert (job.cost, job.settled) == (0, True)


def test_a_waiting_job_throttled_past_the_retry_policy_succeeds_in_one_run(deps) -> None:
    deps.client.script(CHEAP, *[_throttled(0.3) for _ in range(deps.settings.upstream_max_attempts + 1)])
    job_id = _submit(deps)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        assert (job.model_used, job.run_count, job.cost > 0, job.settled) == (CHEAP, 1, True, True)


def test_the_simulator_paces_the_real_client_through_admission(catalog, tmp_path: Path, real_redis) -> None:
    """The real client learns the simulator's limit from its headers: later jobs wait their turn, no 429."""
    real_clock = Admission(redis.Redis.from_url(UNIT_REDIS_URL))
    with running_sim(rpm=120) as sim:
        settings = make_test_settings(f"sqlite:///{tmp_path}/router.db", openai_base_url=sim.base_url)
        client = OpenAIChatClient(settings)
        try:
            answered = 0
            for _ in range(6):
                outcome = dispatch.answer(
                    _job(catalog, can_defer=False),
                    using=dispatch.Answerer(catalog=catalog, settings=settings, client=client, admission=real_clock),
                )
                answered += outcome.completion is not None
        finally:
            client.close()
        stats = sim.stats()[CHEAP]
    assert answered == 6
    # The first answer told the limit; none was refused after it.
    assert stats["throttled"] == 0 and stats["calls"] == 6


def test_a_job_that_chose_fallback_is_answered_by_the_next_model_at_once(deps, admission) -> None:
    _limit(admission, CHEAP, rpm=6, used=2)
    job_id = _submit(deps, on_rate_limit="fallback")
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    with deps.sessions() as session:
        assert session.get(RequestLog, job_id).model_used == MID
