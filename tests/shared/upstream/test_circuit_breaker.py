"""The circuit breaker's state machine: on an in-memory Redis (its Lua scripts included) with a controlled
clock, and on the real Redis for what only a real server shows, callers racing each other."""

from __future__ import annotations

import logging
import threading

import fakeredis
import pytest
import redis

from shared.store import redis_clients
from shared.upstream.circuit_breaker import CLOSED
from shared.upstream.circuit_breaker import HALF_OPEN
from shared.upstream.circuit_breaker import OPEN
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.circuit_breaker import Permit
from tests.conftest import UNIT_REDIS_URL
from tests.support.fakes import Clock

POLICY = BreakerPolicy(window_s=30, min_failures=3, failure_rate=0.5, cooldown_s=10, half_open_probes=1)
RACERS = 16


@pytest.fixture(params=["in_memory", "real"])
def server(request: pytest.FixtureRequest) -> redis.Redis:
    """Each state-machine test runs on fakeredis's Lua and on the real server's."""
    return fakeredis.FakeRedis() if request.param == "in_memory" else request.getfixturevalue("real_redis")


@pytest.fixture
def breaker(server: redis.Redis, clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(server, POLICY, clock=clock)


def _call(breaker: CircuitBreaker, model: str = "m") -> Permit:
    permit = breaker.allow(model)
    assert permit is not None
    return permit


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(POLICY.min_failures):
        breaker.record_failure(_call(breaker))


def _half_open(breaker: CircuitBreaker, clock: Clock) -> None:
    _open(breaker)
    clock.now += POLICY.cooldown_s


def test_a_new_circuit_is_closed_and_allows_calls(breaker: CircuitBreaker) -> None:
    assert breaker.state("m") == CLOSED
    assert breaker.allow("m") is not None


def test_it_opens_after_enough_failures(breaker: CircuitBreaker) -> None:
    for _ in range(POLICY.min_failures - 1):
        breaker.record_failure(_call(breaker))
    assert breaker.state("m") == CLOSED
    breaker.record_failure(_call(breaker))
    assert (breaker.state("m"), breaker.allow("m")) == (OPEN, None)


def test_a_low_failure_rate_keeps_it_closed(breaker: CircuitBreaker) -> None:
    for _ in range(10):
        breaker.record_success(_call(breaker))
    for _ in range(POLICY.min_failures):
        breaker.record_failure(_call(breaker))
    assert breaker.state("m") == CLOSED


def test_failures_of_an_ended_window_do_not_count(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(POLICY.min_failures - 1):
        breaker.record_failure(_call(breaker))
    clock.now += POLICY.window_s
    breaker.record_failure(_call(breaker))
    assert breaker.state("m") == CLOSED


def test_circuits_are_per_model(breaker: CircuitBreaker) -> None:
    _open(breaker)
    assert breaker.states(["m", "other"]) == {"m": OPEN, "other": CLOSED}


def test_after_the_cooldown_it_lets_limited_probes_through(breaker: CircuitBreaker, clock: Clock) -> None:
    _half_open(breaker, clock)
    assert breaker.state("m") == HALF_OPEN
    probe = breaker.allow("m")
    assert probe is not None and probe.probe
    assert breaker.allow("m") is None  # only one probe at a time


def test_a_successful_probe_closes_it(breaker: CircuitBreaker, clock: Clock) -> None:
    _half_open(breaker, clock)
    breaker.record_success(_call(breaker))
    assert breaker.state("m") == CLOSED
    assert not _call(breaker).probe


def test_a_failed_probe_opens_it_for_another_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    _half_open(breaker, clock)
    breaker.record_failure(_call(breaker))
    assert (breaker.state("m"), breaker.allow("m")) == (OPEN, None)
    clock.now += POLICY.cooldown_s
    assert breaker.allow("m") is not None


def test_a_probe_that_never_reports_is_replaced_after_a_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    _half_open(breaker, clock)
    _call(breaker)  # its worker dies: no result ever comes
    clock.now += POLICY.cooldown_s - 1
    assert breaker.allow("m") is None
    clock.now += 1
    breaker.record_success(_call(breaker))
    assert breaker.state("m") == CLOSED


def test_refused_calls_do_not_postpone_the_replacement_of_a_lost_probe(breaker: CircuitBreaker, clock: Clock) -> None:
    _half_open(breaker, clock)
    _call(breaker)
    for _ in range(int(POLICY.cooldown_s) - 1):
        clock.now += 1
        assert breaker.allow("m") is None
    clock.now += 1
    assert breaker.allow("m") is not None


def test_a_probe_that_learned_nothing_gives_its_place_back(breaker: CircuitBreaker, clock: Clock) -> None:
    _half_open(breaker, clock)
    breaker.release(_call(breaker))  # e.g. answered 429: busy, not broken
    assert breaker.state("m") == HALF_OPEN
    breaker.record_success(_call(breaker))
    assert breaker.state("m") == CLOSED


def test_releasing_a_closed_circuits_permit_counts_nothing(breaker: CircuitBreaker) -> None:
    for _ in range(10):
        breaker.release(_call(breaker))
    for _ in range(POLICY.min_failures):
        breaker.record_failure(_call(breaker))
    assert breaker.state("m") == OPEN


def test_a_success_of_a_call_started_before_the_circuit_opened_does_not_close_it(breaker: CircuitBreaker) -> None:
    slow = _call(breaker)
    _open(breaker)
    breaker.record_success(slow)
    assert (breaker.state("m"), breaker.allow("m")) == (OPEN, None)


def test_a_late_success_does_not_decide_for_the_probe(breaker: CircuitBreaker, clock: Clock) -> None:
    slow = _call(breaker)
    _half_open(breaker, clock)
    probe = _call(breaker)
    breaker.record_success(slow)
    assert breaker.state("m") == HALF_OPEN
    breaker.record_failure(probe)
    assert breaker.state("m") == OPEN


def test_a_late_failure_does_not_count_against_the_closed_circuit(server: redis.Redis, clock: Clock) -> None:
    touchy = BreakerPolicy(window_s=30, min_failures=1, failure_rate=0.1, cooldown_s=10, half_open_probes=1)
    breaker = CircuitBreaker(server, touchy, clock=clock)
    slow = _call(breaker)
    breaker.record_failure(_call(breaker))
    clock.now += touchy.cooldown_s
    breaker.record_success(_call(breaker))
    assert breaker.state("m") == CLOSED
    breaker.record_failure(slow)
    assert breaker.state("m") == CLOSED


def test_the_state_is_shared_by_breakers_on_the_same_redis(clock: Clock) -> None:
    server = fakeredis.FakeServer()
    one = CircuitBreaker(fakeredis.FakeRedis(server=server), POLICY, clock=clock)
    two = CircuitBreaker(fakeredis.FakeRedis(server=server), POLICY, clock=clock)
    _open(one)
    assert two.allow("m") is None


def test_an_unreachable_redis_fails_open() -> None:
    unreachable = CircuitBreaker(redis_clients.fast_failing("redis://127.0.0.1:1/0"), POLICY)
    permit = unreachable.allow("m")
    assert permit is not None
    unreachable.record_failure(permit)
    assert unreachable.state("m") == CLOSED


def _race(breakers: list[CircuitBreaker], act) -> list:
    """Run act(breaker) on every breaker at once, each from its own thread; return the results."""
    start = threading.Barrier(len(breakers))
    results: list = [None] * len(breakers)

    def run(index: int) -> None:
        start.wait()
        results[index] = act(breakers[index])

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(breakers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("probes", [1, 3])
def test_racing_callers_on_the_real_redis_let_exactly_the_probes_through(
    real_redis: redis.Redis, clock: Clock, probes: int
) -> None:
    policy = BreakerPolicy(window_s=30, min_failures=3, failure_rate=0.5, cooldown_s=10, half_open_probes=probes)
    # One client per racer, as in as many worker processes.
    breakers = [CircuitBreaker(redis.Redis.from_url(UNIT_REDIS_URL), policy, clock=clock) for _ in range(RACERS)]
    _open(breakers[0])
    for _ in range(5):
        clock.now += policy.cooldown_s
        permits = _race(breakers, lambda breaker: breaker.allow("m"))
        assert sum(permit is not None for permit in permits) == probes
        for permit in permits:
            if permit is not None:
                breakers[0].record_failure(permit)
        assert breakers[0].state("m") == OPEN


def test_racing_results_of_the_probes_move_the_circuit_once(
    real_redis: redis.Redis, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    policy = BreakerPolicy(window_s=30, min_failures=3, failure_rate=0.5, cooldown_s=10, half_open_probes=RACERS)
    breakers = [CircuitBreaker(redis.Redis.from_url(UNIT_REDIS_URL), policy, clock=clock) for _ in range(RACERS)]
    _open(breakers[0])
    clock.now += policy.cooldown_s
    probes = [_call(breaker) for breaker in breakers]
    caplog.set_level(logging.INFO, logger="shared.upstream.circuit_breaker")
    caplog.clear()
    # Half the probes succeed and half fail, all at once: the first to arrive decides, the rest are late.
    _race(
        breakers,
        lambda breaker: (breaker.record_success if breakers.index(breaker) % 2 else breaker.record_failure)(
            probes[breakers.index(breaker)]
        ),
    )
    moves = [record.getMessage() for record in caplog.records if record.getMessage().startswith("circuit ")]
    assert len(moves) == 1, moves
    assert breakers[0].state("m") == (OPEN if "opened" in moves[0] else CLOSED)


def test_racing_failures_open_the_closed_circuit_once(
    real_redis: redis.Redis, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    breakers = [CircuitBreaker(redis.Redis.from_url(UNIT_REDIS_URL), POLICY, clock=clock) for _ in range(RACERS)]
    permits = [_call(breaker) for breaker in breakers]
    caplog.clear()
    _race(breakers, lambda breaker: breaker.record_failure(permits[breakers.index(breaker)]))
    assert [record.getMessage() for record in caplog.records] == ["circuit opened for m"]
    clock.now += POLICY.cooldown_s
    assert sum(breaker.allow("m") is not None for breaker in breakers) == POLICY.half_open_probes
