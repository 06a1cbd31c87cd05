"""Circuit breakers per model, shared by every worker process through Redis.

closed → open: at least `min_failures` failures in the current `window_s`, making up at least
`failure_rate` of the window's calls. open → half-open: once `cooldown_s` has passed, up to
`half_open_probes` calls are let through. half-open → closed on a probe's success, → open on its failure.
A probe that never reports (its worker died) stops counting when its key expires after a cooldown.

Redis being unreachable never blocks a call: the breaker then fails open and says so in the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.config import DEFAULT_REDIS_MAX_CONNECTIONS
from shared.config import Settings

logger = logging.getLogger(__name__)

PREFIX = "model_router:circuit:"
CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a model's circuit opens and how it recovers."""

    window_s: int = 30
    min_failures: int = 5
    failure_rate: float = 0.5
    cooldown_s: float = 15.0
    half_open_probes: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerPolicy:
        return cls(
            window_s=settings.circuit_window_s,
            min_failures=settings.circuit_min_failures,
            failure_rate=settings.circuit_failure_rate,
            cooldown_s=settings.circuit_cooldown_s,
            half_open_probes=settings.circuit_half_open_probes,
        )


def fast_failing_client(redis_url: str, *, max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS) -> redis.Redis:
    """Return a Redis client that gives up at once: a down Redis must not slow every upstream call."""
    return redis.Redis.from_url(
        redis_url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
    )


class CircuitBreaker:
    """The breakers of every model, kept in Redis."""

    def __init__(self, client: redis.Redis, policy: BreakerPolicy, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._policy = policy
        self._clock = clock

    def _key(self, model: str, part: str) -> str:
        return f"{PREFIX}{model}:{part}"

    def state(self, model: str) -> str:
        """Return the model's state as the next call would see it."""
        try:
            raw = self._redis.get(self._key(model, "state"))
            if raw is None:
                return CLOSED
            if raw.decode() == OPEN and self._cooled_down(model):
                return HALF_OPEN
            return raw.decode()
        except redis.RedisError:
            logger.warning("circuit state unknown (Redis unreachable); treating %s as closed", model)
            return CLOSED

    def states(self, models: Iterable[str]) -> dict[str, str]:
        """Return the state of each model."""
        return {model: self.state(model) for model in models}

    def allow(self, model: str) -> bool:
        """Tell whether a call to `model` may go ahead now (a half-open circuit lets a few probes through)."""
        try:
            raw = self._redis.get(self._key(model, "state"))
            if raw is None:
                return True
            state = raw.decode()
            if state == OPEN:
                if not self._cooled_down(model):
                    return False
                self._redis.set(self._key(model, "state"), HALF_OPEN)
                self._redis.delete(self._key(model, "probes"))
            probes = self._redis.incr(self._key(model, "probes"))
            self._redis.expire(self._key(model, "probes"), max(1, int(self._policy.cooldown_s)))
            return probes <= self._policy.half_open_probes
        except redis.RedisError:
            logger.warning("circuit check skipped (Redis unreachable); allowing a call to %s", model)
            return True

    def record_success(self, model: str) -> None:
        """Count a success; a success while half-open (or open) closes the circuit."""
        try:
            # One round trip for the usual case, a closed circuit: read the state and count the call together.
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(self._key(model, "state"))
            self._queue_count(pipe, model, "calls")
            state, *_ = pipe.execute()
            if state is not None:
                self._redis.delete(*(self._key(model, part) for part in ("state", "opened_at", "fails", "calls",
                                                                            "probes")))  # fmt: skip
                logger.info("circuit closed for %s", model)
        except redis.RedisError:
            logger.warning("circuit success not recorded (Redis unreachable) for %s", model)

    def record_failure(self, model: str) -> None:
        """Count a failure; open the circuit when the window's failures cross the policy."""
        try:
            state = self._redis.get(self._key(model, "state"))
            if state is not None and state.decode() == HALF_OPEN:
                self._open(model)
                return
            if state is not None:
                return
            fails = self._count(model, "fails")
            calls = self._count(model, "calls")
            policy = self._policy
            if fails >= policy.min_failures and fails / max(calls, 1) >= policy.failure_rate:
                self._open(model)
        except redis.RedisError:
            logger.warning("circuit failure not recorded (Redis unreachable) for %s", model)

    def _count(self, model: str, part: str) -> int:
        pipe = self._redis.pipeline(transaction=False)
        self._queue_count(pipe, model, part)
        return int(pipe.execute()[0])

    def _queue_count(self, pipe: redis.client.Pipeline, model: str, part: str) -> None:
        """Queue an increment of the window's counter, which expires with the window that opened it."""
        key = self._key(model, part)
        pipe.incr(key)
        pipe.expire(key, self._policy.window_s, nx=True)

    def _open(self, model: str) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._key(model, "state"), OPEN)
        pipe.set(self._key(model, "opened_at"), repr(self._clock()))
        pipe.delete(self._key(model, "fails"), self._key(model, "calls"), self._key(model, "probes"))
        pipe.execute()
        logger.warning("circuit opened for %s", model)

    def _cooled_down(self, model: str) -> bool:
        opened_at = self._redis.get(self._key(model, "opened_at"))
        return opened_at is None or self._clock() - float(opened_at) >= self._policy.cooldown_s
