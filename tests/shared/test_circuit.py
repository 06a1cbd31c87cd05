"""The circuit breaker's state machine, on an in-memory Redis with a controlled clock."""

from __future__ import annotations

import fakeredis
import pytest

from shared.circuit import CLOSED
from shared.circuit import HALF_OPEN
from shared.circuit import OPEN
from shared.circuit import BreakerPolicy
from shared.circuit import CircuitBreaker
from shared.circuit import fast_failing_client

POLICY = BreakerPolicy(window_s=30, min_failures=3, failure_rate=0.5, cooldown_s=10, half_open_probes=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(fakeredis.FakeRedis(), POLICY, clock=clock)


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(POLICY.min_failures):
        breaker.record_failure("m")


def test_a_new_circuit_is_closed_and_allows_calls(breaker: CircuitBreaker) -> None:
    assert (breaker.state("m"), breaker.allow("m")) == (CLOSED, True)


def test_it_opens_after_enough_failures(breaker: CircuitBreaker) -> None:
    for _ in range(POLICY.min_failures - 1):
        breaker.record_failure("m")
    assert breaker.state("m") == CLOSED
    breaker.record_failure("m")
    assert (breaker.state("m"), breaker.allow("m")) == (OPEN, False)


def test_a_low_failure_rate_keeps_it_closed(breaker: CircuitBreaker) -> None:
    for _ in range(10):
        breaker.record_success("m")
    for _ in range(POLICY.min_failures):
        breaker.record_failure("m")
    assert breaker.state("m") == CLOSED


def test_circuits_are_per_model(breaker: CircuitBreaker) -> None:
    _open(breaker)
    assert breaker.states(["m", "other"]) == {"m": OPEN, "other": CLOSED}


def test_after_the_cooldown_it_lets_limited_probes_through(breaker: CircuitBreaker, clock: Clock) -> None:
    _open(breaker)
    clock.now += POLICY.cooldown_s
    assert breaker.state("m") == HALF_OPEN
    assert breaker.allow("m") is True
    assert breaker.allow("m") is False  # only one probe at a time


def test_a_successful_probe_closes_it(breaker: CircuitBreaker, clock: Clock) -> None:
    _open(breaker)
    clock.now += POLICY.cooldown_s
    assert breaker.allow("m")
    breaker.record_success("m")
    assert (breaker.state("m"), breaker.allow("m")) == (CLOSED, True)


def test_a_failed_probe_opens_it_for_another_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    _open(breaker)
    clock.now += POLICY.cooldown_s
    assert breaker.allow("m")
    breaker.record_failure("m")
    assert (breaker.state("m"), breaker.allow("m")) == (OPEN, False)
    clock.now += POLICY.cooldown_s
    assert breaker.allow("m")


def test_the_state_is_shared_by_breakers_on_the_same_redis(clock: Clock) -> None:
    server = fakeredis.FakeServer()
    one = CircuitBreaker(fakeredis.FakeRedis(server=server), POLICY, clock=clock)
    two = CircuitBreaker(fakeredis.FakeRedis(server=server), POLICY, clock=clock)
    _open(one)
    assert two.allow("m") is False


def test_an_unreachable_redis_fails_open() -> None:
    unreachable = CircuitBreaker(fast_failing_client("redis://127.0.0.1:1/0"), POLICY)
    assert unreachable.allow("m") is True
    unreachable.record_failure("m")
    assert unreachable.state("m") == CLOSED
