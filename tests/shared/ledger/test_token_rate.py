"""Tokens-per-minute windows in Redis: counted at accept, corrected at settle, never below zero."""

from __future__ import annotations

import pytest
import redis

from shared.errors import TokenRateExceeded
from shared.ledger import token_rate
from shared.store import redis_clients

# Ten seconds into a minute: the window has 50 s left.
NOW = 1_000_000 * token_rate.WINDOW_S + 10.0


@pytest.fixture
def clock() -> list[float]:
    return [NOW]


@pytest.fixture
def windows(real_redis: redis.Redis, clock: list[float]) -> token_rate.TokenWindows:
    return token_rate.TokenWindows(real_redis, clock=lambda: clock[0])


def test_tokens_that_do_not_fit_are_refused_until_the_minute_ends(windows: token_rate.TokenWindows) -> None:
    windows.take(api_key_id=1, job_id="a", tokens=700, limit=1000)
    with pytest.raises(TokenRateExceeded) as refused:
        windows.take(api_key_id=1, job_id="b", tokens=400, limit=1000)
    assert refused.value.retry_after_s == 50
    assert refused.value.details == {"limit": "tpm", "tpm": 1000, "tokens": 400, "used": 700}
    assert windows.used(1) == 700  # a refusal counts nothing


def test_each_key_has_its_own_window(windows: token_rate.TokenWindows) -> None:
    windows.take(api_key_id=1, job_id="a", tokens=1000, limit=1000)
    windows.take(api_key_id=2, job_id="b", tokens=1000, limit=1000)
    assert (windows.used(1), windows.used(2)) == (1000, 1000)


def test_a_new_minute_starts_empty(windows: token_rate.TokenWindows, clock: list[float]) -> None:
    windows.take(api_key_id=1, job_id="a", tokens=1000, limit=1000)
    clock[0] += token_rate.WINDOW_S
    windows.take(api_key_id=1, job_id="b", tokens=1000, limit=1000)


def test_settling_gives_back_what_the_job_did_not_use(windows: token_rate.TokenWindows) -> None:
    windows.take(api_key_id=1, job_id="a", tokens=900, limit=1000)
    assert windows.settle("a", actual_tokens=lambda: 150) == -750
    assert windows.used(1) == 150
    windows.take(api_key_id=1, job_id="b", tokens=800, limit=1000)


def test_settling_charges_what_the_job_used_beyond_its_bound(windows: token_rate.TokenWindows) -> None:
    windows.take(api_key_id=1, job_id="a", tokens=300, limit=1000)
    windows.settle("a", actual_tokens=lambda: 1100)
    assert windows.used(1) == 1100


def test_a_job_is_settled_once_and_never_below_zero(windows: token_rate.TokenWindows, real_redis: redis.Redis) -> None:
    windows.take(api_key_id=1, job_id="a", tokens=500, limit=1000)
    # Another correction got there first (the counter was reset by hand, say).
    real_redis.set(f"{token_rate.NAMESPACE}:key:1:{int(NOW // token_rate.WINDOW_S)}", 100)
    windows.settle("a", actual_tokens=lambda: 0)
    assert windows.used(1) == 0
    assert windows.settle("a", actual_tokens=lambda: 0) is None


def test_a_job_of_a_key_without_a_limit_is_not_read(windows: token_rate.TokenWindows) -> None:
    def unread() -> int:
        raise AssertionError("the job's tokens were read")

    assert windows.settle("never-counted", actual_tokens=unread) is None


def test_an_ended_window_is_not_brought_back(windows: token_rate.TokenWindows, real_redis: redis.Redis) -> None:
    windows.take(api_key_id=1, job_id="a", tokens=500, limit=1000)
    real_redis.delete(f"{token_rate.NAMESPACE}:key:1:{int(NOW // token_rate.WINDOW_S)}")  # as its expiry would
    windows.settle("a", actual_tokens=lambda: 900)
    assert windows.used(1) == 0


def test_a_request_above_the_whole_limit_is_refused_without_a_wait(windows: token_rate.TokenWindows) -> None:
    with pytest.raises(TokenRateExceeded) as refused:
        windows.take(api_key_id=1, job_id="a", tokens=1001, limit=1000)
    assert refused.value.retry_after_s is None


def test_an_unreachable_redis_lets_requests_through() -> None:
    windows = token_rate.TokenWindows(redis_clients.fast_failing("redis://127.0.0.1:1/0"))
    windows.take(api_key_id=1, job_id="a", tokens=5, limit=5)
    assert windows.settle("a", actual_tokens=lambda: 0) is None
