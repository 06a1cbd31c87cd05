"""Balancing a model's deployments: the least busy per weight first, an open circuit last, stale calls forgotten."""

from __future__ import annotations

import dataclasses
from collections import Counter
from decimal import Decimal

import fakeredis
import pytest
import redis

from shared.routing.catalog import Deployment
from shared.routing.catalog import ModelSpec
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
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
    down = redis.Redis(port=1, socket_connect_timeout=0.1)
    balancer = Balancer(down, rng=lambda: 0.5)
    a = MODEL.served_by()[0]
    assert balancer.begin(a) is None
    assert _names(balancer.order(MODEL)) == ["a", "b"]
