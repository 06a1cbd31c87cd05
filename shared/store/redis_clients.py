"""Every Redis client the product opens is made here; how long each waits is its caller's choice.

A caller on a request's or a job's path gives up at once (a down Redis must not slow what does not need it),
the completion listener outwaits its idle pings, a stream reader its longest block: those choices stay with
the callers, as options, while the way a client is made (its own pool, the URL's database and credentials,
redis-py's defaults for whatever is not said) is written once.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.config import DEFAULT_REDIS_MAX_CONNECTIONS

FAST_FAIL_TIMEOUT_S = 0.5


def connect(
    redis_url: str,
    *,
    socket_timeout: float,
    socket_connect_timeout: float | None = None,
    max_connections: int | None = None,
    health_check_interval: int | None = None,
    retries: int | None = None,
) -> redis.Redis:
    """Return a client with a pool of its own; options left out keep redis-py's defaults.

    `retries=0` sends each command once: a caller that has its own way out of a failure (a fallback, a retry
    of the whole task) must not wait through redis-py's retries first.
    """
    return redis.Redis.from_url(
        redis_url,
        **_options(
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            max_connections=max_connections,
            health_check_interval=health_check_interval,
            retry=None if retries is None else Retry(NoBackoff(), retries),
        ),
    )


def fast_failing(redis_url: str, *, max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS) -> redis.Redis:
    """Return a client that gives up at once: a down Redis must not slow every upstream call."""
    return connect(
        redis_url,
        socket_timeout=FAST_FAIL_TIMEOUT_S,
        socket_connect_timeout=FAST_FAIL_TIMEOUT_S,
        max_connections=max_connections,
        retries=0,
    )


def subscriber_pool(redis_url: str, *, socket_timeout: float, socket_connect_timeout: float) -> redis.ConnectionPool:
    """Return a pool to take pub/sub connections from, speaking RESP2: subscription replies and messages then
    arrive as plain replies, not as RESP3 pushes."""
    return redis.ConnectionPool.from_url(
        redis_url, protocol=2, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
    )


def _options(**options: Any) -> dict[str, Any]:
    # redis-py's defaults differ from None (a 5 s connect timeout, say): an option not given is not passed.
    return {name: value for name, value in options.items() if value is not None}
