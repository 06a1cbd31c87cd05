"""Balancing a model's deployments: the soonest to answer first, throttled and open ones last, stale calls forgotten."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from datetime import UTC
from datetime import datetime
from decimal import Decimal

import fakeredis
import pytest

from shared.routing.catalog import Deployment
from shared.routing.catalog import ModelSpec
from shared.store import redis_clients
from shared.upstream.admission import Admission
from shared.upstream.admission import RateLimits
from shared.upstream.attempts import AttemptRecord
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.deployments import PACE_TTL_S
from shared.upstream.deployments import Balancer
from tests.support.fakes import Clock

MODEL = ModelSpec(
    name="m",
    tier="cheap",
    input_per_1k=Decimal("0.001"),
    output_per_1k=Decimal("0.002"),
    deployments=(Deployment("a"), Deployment("b")),
)


@pytest.fixture
def balancer(clock: Clock) -> Balancer:
    return Balancer(fakeredis.FakeRedis(), stale_s=60, clock=clock, rng=lambda: 0.5)


def _names(specs) -> list[str | None]:
    return [spec.deployment for spec in specs]


def test_a_model_without_deployments_is_served_as_it_is(balancer: Balancer) -> None:
    single = dataclasses.replace(MODEL, deployments=())
    assert balancer.order(single) == (single,)
    assert balancer.begin(single) is None


def test_the_deployment_with_fewer_calls_in_flight_comes_first(balancer: Balancer) -> None:
    a = MODEL.served_by()[0]
    call = balancer.begin(a)
    assert _names(balancer.order(MODEL)) == ["b", "a"]
    balancer.end(a, call)
    assert balancer.in_flight(MODEL.served_by()) == {"m@a": 0, "m@b": 0}


def test_calls_in_flight_are_weighed_by_the_deployments_weight(balancer: Balancer) -> None:
    heavy = dataclasses.replace(MODEL, deployments=(Deployment("a"), Deployment("b", weight=Decimal(3))))
    b = heavy.served_by()[1]
    for _ in range(2):
        balancer.begin(b)
    # b: 2 calls for weight 3 is less busy than a: 1 call for weight 1.
    balancer.begin(heavy.served_by()[0])
    assert _names(balancer.order(heavy)) == ["b", "a"]


def test_idle_deployments_come_first_in_proportion_to_their_weight() -> None:
    heavy = dataclasses.replace(MODEL, deployments=(Deployment("a"), Deployment("b", weight=Decimal(3))))
    balancer = Balancer(fakeredis.FakeRedis())
    firsts = Counter(balancer.order(heavy)[0].deployment for _ in range(2000))
    assert 0.68 < firsts["b"] / 2000 < 0.82


def test_a_deployment_with_an_open_circuit_goes_last(balancer: Balancer) -> None:
    breaker = CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=1, failure_rate=0.5, cooldown_s=60))
    breaker.record_failure(breaker.allow("m@a"))
    assert breaker.state("m@a") == "open" and breaker.state("m") == "closed"
    for _ in range(3):
        balancer.begin(MODEL.served_by()[1])
    assert _names(balancer.order(MODEL, breaker=breaker)) == ["b", "a"]


def test_a_call_whose_worker_died_stops_counting_once_stale(balancer: Balancer, clock: Clock) -> None:
    balancer.begin(MODEL.served_by()[0])
    clock.now += 61
    assert balancer.in_flight(MODEL.served_by()) == {"m@a": 0, "m@b": 0}


def test_redis_unreachable_balances_by_weight_alone() -> None:
    down = redis_clients.fast_failing("redis://127.0.0.1:1/0")
    balancer = Balancer(down, rng=lambda: 0.5)
    a = MODEL.served_by()[0]
    assert balancer.begin(a) is None
    balancer.learn(a, _answered(a, seconds=1.0, tokens=10))
    breaker = CircuitBreaker(down, BreakerPolicy())
    assert _names(balancer.order(MODEL, breaker=breaker, admission=Admission(down))) == ["a", "b"]
    assert balancer.paces(["m@a"]) == {}


def _answered(spec: ModelSpec, *, seconds: float, tokens: int, outcome: str = "ok") -> AttemptRecord:
    return AttemptRecord(
        model=spec.name,
        tier=spec.tier,
        outcome=outcome,
        latency_ms=seconds * 1000,
        started_at=datetime.now(UTC),
        completion_tokens=tokens,
        deployment=spec.deployment,
    )


def _teach(balancer: Balancer, model: ModelSpec, **seconds_per_100_tokens: float) -> None:
    for spec in model.served_by():
        if spec.deployment in seconds_per_100_tokens:
            balancer.learn(spec, _answered(spec, seconds=seconds_per_100_tokens[spec.deployment], tokens=100))


def test_of_two_equally_busy_deployments_the_faster_comes_first(balancer: Balancer) -> None:
    _teach(balancer, MODEL, a=2.0, b=1.0)
    assert _names(balancer.order(MODEL)) == ["b", "a"]
    for spec in MODEL.served_by():
        balancer.begin(spec)
    assert _names(balancer.order(MODEL)) == ["b", "a"]


def test_a_faster_deployment_busier_than_its_pace_makes_up_for_comes_second(balancer: Balancer) -> None:
    _teach(balancer, MODEL, a=2.0, b=1.0)
    b = MODEL.served_by()[1]
    # b: 1 s x (1 + 2 calls) expected, against a's 2 s idle.
    for _ in range(2):
        balancer.begin(b)
    assert _names(balancer.order(MODEL)) == ["a", "b"]


def test_under_steady_load_a_slow_deployment_gets_fewer_calls_than_a_fast_one(clock: Clock) -> None:
    """Ten calls a second, each lasting its deployment's pace (a: 2 s, b: 0.5 s), both of weight 1."""
    balancer = Balancer(fakeredis.FakeRedis(), clock=clock, rng=random.Random(7).random)
    lasts = {"a": 2.0, "b": 0.5}
    running: list[tuple[float, ModelSpec, str]] = []
    served: Counter[str] = Counter()
    for _ in range(600):
        clock.now += 0.1
        for done in [call for call in running if call[0] <= clock.now]:
            running.remove(done)
            balancer.end(done[1], done[2])
            balancer.learn(done[1], _answered(done[1], seconds=lasts[done[1].deployment], tokens=100))
        spec = balancer.order(MODEL)[0]
        served[spec.deployment] += 1
        running.append((clock.now + lasts[spec.deployment], spec, balancer.begin(spec)))
    assert served["b"] > 2 * served["a"]
    # The slow one still takes what the fast one's queue makes worth sending it.
    assert served["a"] > 0


def test_weights_still_share_calls_between_deployments_of_nearly_equal_pace() -> None:
    heavy = dataclasses.replace(MODEL, deployments=(Deployment("a"), Deployment("b", weight=Decimal(3))))
    balancer = Balancer(fakeredis.FakeRedis())
    # 10 % apart: measurement noise, not a difference worth all the calls.
    _teach(balancer, heavy, a=1.0, b=1.1)
    firsts = Counter(balancer.order(heavy)[0].deployment for _ in range(2000))
    assert 0.68 < firsts["b"] / 2000 < 0.82


def test_a_pace_is_per_output_token_so_long_answers_do_not_make_a_deployment_slow(balancer: Balancer) -> None:
    a, b = MODEL.served_by()
    balancer.learn(a, _answered(a, seconds=1.0, tokens=100))
    balancer.learn(b, _answered(b, seconds=10.0, tokens=1000))
    # The same pace: the catalog's order (rng 0.5) decides.
    assert balancer.paces(["m@a", "m@b"]) == {"m@a": pytest.approx(0.01), "m@b": pytest.approx(0.01)}
    assert _names(balancer.order(MODEL)) == ["a", "b"]


def test_a_pace_moves_with_each_answer_not_at_once(balancer: Balancer) -> None:
    a = MODEL.served_by()[0]
    balancer.learn(a, _answered(a, seconds=1.0, tokens=100))
    balancer.learn(a, _answered(a, seconds=11.0, tokens=100))
    assert balancer.paces(["m@a"]) == {"m@a": pytest.approx(3.0 / 100)}


def test_only_an_answered_call_teaches_a_pace(balancer: Balancer) -> None:
    a = MODEL.served_by()[0]
    balancer.learn(a, _answered(a, seconds=30.0, tokens=0, outcome="error"))
    balancer.learn(dataclasses.replace(MODEL), _answered(MODEL, seconds=1.0, tokens=10))
    assert balancer.paces(["m@a", "m"]) == {}


def test_a_deployment_with_no_pace_yet_is_taken_at_the_mean_of_the_others(balancer: Balancer) -> None:
    three = dataclasses.replace(MODEL, deployments=(Deployment("a"), Deployment("new"), Deployment("c")))
    _teach(balancer, three, a=3.0, c=1.0)
    assert _names(balancer.order(three)) == ["c", "new", "a"]


def test_a_pace_not_confirmed_for_a_while_is_forgotten(balancer: Balancer, clock: Clock) -> None:
    _teach(balancer, MODEL, a=2.0, b=1.0)
    b = MODEL.served_by()[1]
    clock.now += PACE_TTL_S / 2
    balancer.learn(b, _answered(b, seconds=1.0, tokens=100))
    clock.now += PACE_TTL_S / 2
    # a has not answered since: it is taken at b's pace again, and the catalog's order (rng 0.5) decides.
    assert balancer.paces(["m@a", "m@b"]) == {"m@b": pytest.approx(0.01)}
    assert _names(balancer.order(MODEL)) == ["a", "b"]


def test_a_throttled_deployment_goes_after_the_others_until_its_retry_after_passes(
    balancer: Balancer, clock: Clock
) -> None:
    admission = Admission(fakeredis.FakeRedis(), clock=clock)
    admission.learn("m@a", RateLimits(retry_after_s=30), throttled=True)
    _teach(balancer, MODEL, a=1.0, b=2.0)
    for _ in range(3):
        balancer.begin(MODEL.served_by()[1])
    # Faster and idle, a still waits behind b while its upstream asked to be left alone.
    assert _names(balancer.order(MODEL, admission=admission)) == ["b", "a"]
    clock.now += 29
    assert _names(balancer.order(MODEL, admission=admission)) == ["b", "a"]
    clock.now += 1
    assert _names(balancer.order(MODEL, admission=admission)) == ["a", "b"]


def test_of_two_throttled_deployments_the_one_back_sooner_comes_first(balancer: Balancer, clock: Clock) -> None:
    admission = Admission(fakeredis.FakeRedis(), clock=clock)
    admission.learn("m@a", RateLimits(retry_after_s=30), throttled=True)
    admission.learn("m@b", RateLimits(retry_after_s=10), throttled=True)
    assert _names(balancer.order(MODEL, admission=admission)) == ["b", "a"]


def test_an_open_circuit_goes_after_a_throttled_deployment(balancer: Balancer, clock: Clock) -> None:
    admission = Admission(fakeredis.FakeRedis(), clock=clock)
    admission.learn("m@b", RateLimits(retry_after_s=30), throttled=True)
    breaker = CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=1, failure_rate=0.5, cooldown_s=60))
    breaker.record_failure(breaker.allow("m@a"))
    assert _names(balancer.order(MODEL, breaker=breaker, admission=admission)) == ["b", "a"]
