"""Answering a job: fallbacks, open circuits, the deadline, the reservation, and lost runs."""

from __future__ import annotations

import time
from decimal import Decimal

import fakeredis
import pytest

from shared.errors import PermanentLLMError
from shared.errors import TransientLLMError
from shared.jobs import dispatch
from shared.ledger import budget
from shared.routing.catalog import Catalog
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.llm_client import OpenAIChatClient
from tests.conftest import make_test_settings
from tests.support.fakes import Clock
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok
from tests.support.prompts import EASY
from tests.support.sim import running_sim

DOWN = TransientLLMError("503", status_code=503, details={"error_class": "server_error"})
RATE_LIMITED = TransientLLMError("429", status_code=429, details={"error_class": "rate_limited"})


@pytest.fixture
def fake() -> FakeLLMClient:
    return FakeLLMClient()


@pytest.fixture
def breaker() -> CircuitBreaker:
    return CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=3, failure_rate=0.5, cooldown_s=60))


def _job(catalog: Catalog, **overrides) -> dispatch.Job:
    values = {"prompt": EASY, "max_tokens": 100, "preference": "balanced", "model": None, "tier": None,
              "max_tier": None, "deadline_s": 30.0}  # fmt: skip
    values.update(overrides)
    values.setdefault(
        "reserved_cost",
        budget.reservation_bound(catalog=catalog, tiers=catalog.tiers, prompt=values["prompt"],
                                 max_tokens=values["max_tokens"], escalation=True),
    )  # fmt: skip
    return dispatch.Job(**values)


def _using(catalog: Catalog, settings, fake: FakeLLMClient, breaker: CircuitBreaker | None = None):
    return dispatch.Answerer(catalog=catalog, settings=settings, client=fake, breaker=breaker, sleep=lambda _: None)


def test_a_failing_model_hands_the_job_to_its_fallback(catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", *[DOWN] * settings.upstream_max_attempts)
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake))
    assert outcome.model.name == "gpt-4"
    assert [(purpose, a.model, a.outcome) for purpose, a in outcome.attempts] == [
        ("primary", "gpt-3.5-turbo", "error"), ("primary", "gpt-3.5-turbo", "error"),
        ("primary", "gpt-3.5-turbo", "error"), ("fallback", "gpt-4", "ok"),
    ]  # fmt: skip
    assert outcome.retry_count == settings.upstream_max_attempts - 1


def test_a_permanent_error_falls_back_without_retrying(catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", PermanentLLMError("400", status_code=400))
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake))
    assert fake.calls == ["gpt-3.5-turbo", "gpt-4"]
    assert (outcome.model.name, outcome.retry_count) == ("gpt-4", 0)


def test_when_the_whole_chain_fails_the_last_error_is_kept(catalog, settings, fake) -> None:
    fake.script("gpt-4", PermanentLLMError("400", status_code=400))
    fake.script("gpt-4-turbo", PermanentLLMError("401", status_code=401))
    outcome = dispatch.answer(_job(catalog, tier="mid"), using=_using(catalog, settings, fake))
    assert outcome.completion is None
    assert outcome.error.status_code == 401


def test_an_open_circuit_is_skipped_without_a_call(catalog, settings, fake, breaker) -> None:
    for _ in range(3):
        breaker.record_failure(breaker.allow("gpt-3.5-turbo"))
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, breaker))
    assert fake.calls == ["gpt-4"]
    assert outcome.attempts[0][1].outcome == "skipped"
    assert outcome.attempts[0][1].error_class == "circuit_open"


def test_failures_open_the_circuit_for_later_jobs(catalog, settings, fake, breaker) -> None:
    fake.script("gpt-3.5-turbo", *[DOWN] * settings.upstream_max_attempts)
    dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, breaker))
    assert breaker.state("gpt-3.5-turbo") == "open"
    fake.calls.clear()
    dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, breaker))
    assert fake.calls == ["gpt-4"]


def test_no_call_starts_after_the_deadline(catalog, settings, fake) -> None:
    class Slow(FakeLLMClient):
        def complete(self, **kwargs):
            time.sleep(0.2)
            raise DOWN

    slow = Slow()
    outcome = dispatch.answer(_job(catalog, deadline_s=0.3), using=_using(catalog, settings, slow))
    assert outcome.completion is None
    assert len(slow.calls) <= 2
    assert all(timeout is None or timeout <= 0.3 for timeout in slow.timeouts)


def test_each_call_gets_at_most_the_time_left(catalog, settings, fake) -> None:
    dispatch.answer(_job(catalog, deadline_s=5.0), using=_using(catalog, settings, fake))
    assert 0 < fake.timeouts[0] <= 5.0


def test_a_model_whose_worst_case_exceeds_the_reservation_is_skipped(catalog, settings, fake) -> None:
    cheap_only = budget.reservation_bound(catalog=catalog, tiers=("cheap",), prompt=EASY, max_tokens=100,
                                          escalation=False, max_tier="cheap")  # fmt: skip
    fake.script("gpt-3.5-turbo", PermanentLLMError("400", status_code=400))
    outcome = dispatch.answer(_job(catalog, reserved_cost=cheap_only), using=_using(catalog, settings, fake))
    assert fake.calls == ["gpt-3.5-turbo"]
    assert outcome.attempts[-1][1].error_class == "over_reservation"
    assert outcome.cost <= cheap_only


def test_a_budget_ceiling_keeps_fallbacks_below_it(catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", PermanentLLMError("400", status_code=400))
    outcome = dispatch.answer(_job(catalog, max_tier="cheap"), using=_using(catalog, settings, fake))
    assert fake.calls == ["gpt-3.5-turbo"]
    assert outcome.completion is None


def test_previous_lost_runs_are_recorded_as_such(catalog, settings, fake) -> None:
    outcome = dispatch.answer(_job(catalog, previous_runs=2), using=_using(catalog, settings, fake))
    assert [a.error_class for _, a in outcome.attempts] == ["worker_lost", "worker_lost", None]
    assert outcome.cost == outcome.attempts[-1][1].cost > Decimal(0)


def test_escalation_uses_the_stronger_tiers_chain(catalog, settings, fake) -> None:
    fake.script("gpt-3.5-turbo", ok("I'm not sure."))
    fake.script("gpt-4", PermanentLLMError("400", status_code=400))
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake))
    assert fake.calls == ["gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"]
    assert (outcome.escalated, outcome.model.name) == (True, "gpt-4-turbo")
    assert [purpose for purpose, _ in outcome.attempts] == ["primary", "escalation", "escalation"]


def test_the_check_before_each_call_bounds_the_chat_as_sent_not_its_joined_text(catalog, settings, fake) -> None:
    """A reservation made from the joined text alone does not cover 2,000 empty turns: no call is made."""
    messages = [{"role": "user", "content": ""}] * 2_000 + [{"role": "user", "content": "hi"}]
    prompt = "\n".join(message["content"] for message in messages)
    joined_only = catalog.get_model("gpt-4").cost(len(prompt.encode()) + 16, 10)
    job = _job(catalog, prompt=prompt, messages=messages, model="gpt-4", max_tokens=10, reserved_cost=joined_only)
    outcome = dispatch.answer(job, using=_using(catalog, settings, fake))
    assert fake.calls == []
    assert {(a.model, a.error_class) for _, a in outcome.attempts} == {
        ("gpt-4", "over_reservation"), ("gpt-4-turbo", "over_reservation"),
    }  # fmt: skip
    covered = budget.reservation_bound(catalog=catalog, tiers=("mid",), prompt=prompt, max_tokens=10,
                                       escalation=False, messages=messages)  # fmt: skip
    outcome = dispatch.answer(_job(catalog, prompt=prompt, messages=messages, model="gpt-4", max_tokens=10,
                                    reserved_cost=covered), using=_using(catalog, settings, fake))  # fmt: skip
    assert (fake.calls, outcome.completion is not None) == (["gpt-4"], True)


@pytest.mark.parametrize(("status", "state"), [("429", "closed"), ("500", "open")])
def test_only_a_broken_upstream_opens_the_circuit_a_rate_limit_does_not(
    catalog, tmp_path, status: str, state: str
) -> None:
    """Through the real client and the simulator: a 429 says the upstream is busy, a 5xx that it is broken."""
    breaker = CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=3, failure_rate=0.5, cooldown_s=60))
    with running_sim() as sim:
        sim.configure(fail_first=f"{status}:1000", retry_after_s=0)
        settings = make_test_settings(f"sqlite:///{tmp_path}/router.db", openai_base_url=sim.base_url)
        client = OpenAIChatClient(settings)
        try:
            for _ in range(3):
                dispatch.answer(_job(catalog), using=_using(catalog, settings, client, breaker))
        finally:
            client.close()
    assert breaker.state("gpt-3.5-turbo") == state


@pytest.fixture
def half_open(fake) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    policy = BreakerPolicy(min_failures=3, failure_rate=0.5, cooldown_s=60)
    breaker = CircuitBreaker(fakeredis.FakeRedis(), policy, clock=clock)
    for _ in range(3):
        breaker.record_failure(breaker.allow("gpt-3.5-turbo"))
    clock.now += policy.cooldown_s
    return breaker, clock


def test_a_half_open_circuits_probe_is_one_call(catalog, settings, fake, half_open) -> None:
    breaker, _ = half_open
    fake.script("gpt-3.5-turbo", *[DOWN] * settings.upstream_max_attempts)
    outcome = dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, breaker))
    assert fake.calls == ["gpt-3.5-turbo", "gpt-4"]
    assert outcome.model.name == "gpt-4"
    assert breaker.state("gpt-3.5-turbo") == "open"


def test_a_rate_limited_probe_leaves_the_circuit_half_open_for_the_next(catalog, settings, fake, half_open) -> None:
    breaker, _ = half_open
    fake.script("gpt-3.5-turbo", RATE_LIMITED)
    dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, breaker))
    assert breaker.state("gpt-3.5-turbo") == "half_open"
    fake.calls.clear()
    dispatch.answer(_job(catalog), using=_using(catalog, settings, fake, breaker))
    assert fake.calls == ["gpt-3.5-turbo"]
    assert breaker.state("gpt-3.5-turbo") == "closed"
