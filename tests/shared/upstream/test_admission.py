"""Admission control: the token bucket on the real Redis (its Lua scripts, callers racing each other), what it
learns from an upstream's rate-limit headers, and the simulator's limits it learns them from."""

from __future__ import annotations

import threading

import pytest
import redis

from shared.devstack.simulator.limits import Limiter
from shared.devstack.simulator.limits import format_duration
from shared.store import redis_clients
from shared.upstream.admission import REQUESTS
from shared.upstream.admission import RETRY_AFTER
from shared.upstream.admission import SCOUT
from shared.upstream.admission import SCOUTING
from shared.upstream.admission import TOKENS
from shared.upstream.admission import Admission
from shared.upstream.admission import RateLimits
from shared.upstream.admission import duration_s
from tests.conftest import UNIT_REDIS_URL
from tests.support.fakes import Clock

RACERS = 16


@pytest.fixture
def admission(real_redis: redis.Redis, clock: Clock) -> Admission:
    return Admission(real_redis, burst_s=1.0, clock=clock)


def _headers(**values: str) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in values.items()}


def test_one_call_goes_first_to_an_upstream_never_heard_from_and_its_answer_opens_the_way(
    admission: Admission, clock: Clock
) -> None:
    scout = admission.take("m", tokens=1_000, max_wait_s=60)
    assert (scout.wait_s, scout.limit) == (0, SCOUT)
    # Meanwhile the others wait for its answer, asking again shortly, with nothing reserved.
    waiting = admission.take("m", tokens=1_000, max_wait_s=60)
    assert (waiting.reserved, waiting.limit) == (False, SCOUTING) and 0 < waiting.wait_s <= 0.1
    # An answer that states no limits: nothing is limited from then on.
    admission.learn("m", None, throttled=False, known=scout)
    for _ in range(50):
        ticket = admission.take("m", tokens=1_000, max_wait_s=0)
        assert (ticket.wait_s, ticket.reserved) == (0, True)


def test_a_scout_that_never_reports_is_replaced(admission: Admission, clock: Clock) -> None:
    assert admission.take("m", tokens=1, max_wait_s=0).limit == SCOUT
    assert admission.take("m", tokens=1, max_wait_s=0).limit == SCOUTING
    clock.now += 5
    assert admission.take("m", tokens=1, max_wait_s=0).limit == SCOUT


def test_a_learned_requests_limit_admits_one_second_of_it_then_spaces_the_rest(
    admission: Admission, clock: Clock
) -> None:
    admission.learn("m", RateLimits.from_headers(_headers(x_ratelimit_limit_requests="300")), throttled=False)
    admitted_now = [admission.take("m", tokens=10, max_wait_s=0).wait_s for _ in range(5)]
    assert admitted_now == [0, 0, 0, 0, 0]
    refused = admission.take("m", tokens=10, max_wait_s=0)
    assert not refused.reserved and refused.limit == REQUESTS and refused.wait_s == pytest.approx(0.2)
    # Waiting callers get successive turns, one interval apart: never the same one twice.
    turns = [admission.take("m", tokens=10, max_wait_s=60).wait_s for _ in range(10)]
    assert turns == pytest.approx([0.2 * (n + 1) for n in range(10)])
    assert "requests limit (300/min)" in refused.describe("m")
    clock.now += 60
    assert admission.take("m", tokens=10, max_wait_s=0).wait_s == 0


def test_a_refused_caller_reserves_nothing(admission: Admission) -> None:
    admission.learn("m", RateLimits(limit_requests=60), throttled=False)
    assert admission.take("m", tokens=1, max_wait_s=0).wait_s == 0
    for _ in range(5):
        assert admission.take("m", tokens=1, max_wait_s=0.5).reserved is False
    assert admission.take("m", tokens=1, max_wait_s=5).wait_s == pytest.approx(1.0)


def test_a_tokens_limit_counts_each_call_at_its_bound(admission: Admission) -> None:
    admission.learn("m", RateLimits(limit_tokens=60_000), throttled=False)  # 1000 a second
    assert admission.take("m", tokens=600, max_wait_s=0).wait_s == 0
    ticket = admission.take("m", tokens=600, max_wait_s=10)
    assert ticket.limit == TOKENS and ticket.wait_s == pytest.approx(0.2)
    assert "tokens limit (60000/min)" in ticket.describe("m")


def test_a_429_keeps_every_caller_out_until_its_retry_after(admission: Admission, clock: Clock) -> None:
    limits = RateLimits.from_headers(_headers(retry_after="7", retry_after_ms="2500"))
    admission.learn("m", limits, throttled=True)
    ticket = admission.take("m", tokens=1, max_wait_s=0)
    assert (ticket.reserved, ticket.limit, ticket.wait_s) == (False, RETRY_AFTER, pytest.approx(2.5))
    clock.now += 2.5
    assert admission.take("m", tokens=1, max_wait_s=0).wait_s == 0


def test_a_429_without_headers_still_holds_callers_back(admission: Admission) -> None:
    admission.learn("m", None, throttled=True)
    assert admission.take("m", tokens=1, max_wait_s=0).wait_s > 0


def test_an_exhausted_limit_on_a_success_holds_the_next_call_until_one_is_back(admission: Admission) -> None:
    limits = RateLimits.from_headers(
        _headers(x_ratelimit_limit_requests="60", x_ratelimit_remaining_requests="0", x_ratelimit_reset_requests="1m0s")
    )
    known = admission.take("m", tokens=1, max_wait_s=0)
    admission.learn("m", limits, throttled=False, known=known)
    ticket = admission.take("m", tokens=1, max_wait_s=0)
    assert ticket.limit == REQUESTS and ticket.wait_s == pytest.approx(1.0)


def test_answers_that_say_nothing_new_cost_no_round_trip(admission: Admission, real_redis: redis.Redis) -> None:
    admission.learn("m", RateLimits(limit_requests=600, remaining_requests=9), throttled=False)
    known = admission.take("m", tokens=1, max_wait_s=0)
    real_redis.config_resetstat()
    admission.learn("m", RateLimits(limit_requests=600, remaining_requests=8), throttled=False, known=known)
    admission.learn("m", None, throttled=False, known=known)
    assert real_redis.info("commandstats").get("cmdstat_evalsha") is None
    admission.learn("m", RateLimits(limit_requests=1200), throttled=False, known=known)
    assert real_redis.info("commandstats")["cmdstat_evalsha"]["calls"] == 1


@pytest.mark.parametrize("burst_s", [1.0, 2.0])
def test_racing_callers_in_many_processes_never_get_more_than_the_bucket_holds(
    real_redis: redis.Redis, clock: Clock, burst_s: float
) -> None:
    # One client per racer, as in as many worker processes; the clock stands still: nothing refills.
    racers = [Admission(redis.Redis.from_url(UNIT_REDIS_URL), burst_s=burst_s, clock=clock) for _ in range(RACERS)]
    racers[0].learn("m", RateLimits(limit_requests=240), throttled=False)  # 4 a second
    tickets: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(RACERS)

    def race(admission: Admission) -> None:
        barrier.wait()
        for _ in range(5):
            ticket = admission.take("m", tokens=1, max_wait_s=3.0)
            with lock:
                tickets.append(ticket)

    threads = [threading.Thread(target=race, args=(racer,)) for racer in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    now = [t for t in tickets if t.wait_s == 0]
    reserved = sorted(t.wait_s for t in tickets if t.reserved and t.wait_s > 0)
    assert len(now) == 4 * burst_s
    # Every reserved turn is its own: 0.25 s apart, up to the 3 s the callers would wait, none twice.
    assert reserved == pytest.approx([0.25 * n for n in range(1, len(reserved) + 1)])
    assert reserved[-1] <= 3.0 and len(reserved) == 12
    assert sum(not t.reserved for t in tickets) == RACERS * 5 - len(now) - len(reserved)


def test_redis_unreachable_admits(clock: Clock) -> None:
    admission = Admission(redis_clients.fast_failing("redis://127.0.0.1:1/0"), clock=clock)
    assert admission.take("m", tokens=1, max_wait_s=0).wait_s == 0
    admission.learn("m", None, throttled=True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("250ms", 0.25), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None), ("", None)],
)
def test_reset_durations_are_read_as_openai_writes_them(text: str, seconds: float | None) -> None:
    assert duration_s(text) == seconds


@pytest.mark.parametrize("seconds", [0.2, 1.0, 1.5, 59.0, 360.0, 3723.5])
def test_the_simulator_writes_durations_admission_reads_back(seconds: float) -> None:
    assert duration_s(format_duration(seconds)) == pytest.approx(seconds, abs=1e-3)


def test_the_simulators_limiter_admits_one_second_of_its_rate_and_says_so_like_openai(clock: Clock) -> None:
    limiter = Limiter(clock=clock)
    verdicts = [limiter.check("m", rpm=300, tpm=None, tokens=10) for _ in range(6)]
    assert [v.admitted for v in verdicts] == [True] * 5 + [False]
    assert verdicts[0].headers["x-ratelimit-limit-requests"] == "300"
    assert verdicts[4].headers["x-ratelimit-remaining-requests"] == "0"
    refused = verdicts[5]
    assert refused.limit == "requests"
    assert refused.headers["retry-after-ms"] == "200" and refused.headers["Retry-After"] == "1"
    learned = RateLimits.from_headers(refused.headers)
    assert learned is not None and learned.limit_requests == 300 and learned.retry_after_s == pytest.approx(0.2)
    assert learned.reset_requests_s == pytest.approx(1.0)
    clock.now += 0.2
    assert limiter.check("m", rpm=300, tpm=None, tokens=10).admitted
    # Tokens: counted at the request's prompt and max_tokens.
    assert limiter.check("t", rpm=None, tpm=600, tokens=8).admitted
    assert limiter.check("t", rpm=None, tpm=600, tokens=8).limit == "tokens"


def test_what_remains_upstream_moves_the_bucket_to_match(admission: Admission) -> None:
    # The upstream says 2 of its 5 a second remain although this bucket is full: 2 go now, the next waits.
    admission.learn("m", RateLimits(limit_requests=300, remaining_requests=2), throttled=False)
    waits = [admission.take("m", tokens=1, max_wait_s=10).wait_s for _ in range(4)]
    assert waits == pytest.approx([0, 0, 0.2, 0.4])
