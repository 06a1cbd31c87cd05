"""Balancing a model's calls across its deployments: the least busy first, one with an open circuit last.

A catalog model may be served by several deployments (servers or keys, shared.routing.catalog.Deployment).
Each one's calls in flight are counted in Redis, shared by every worker process, as a sorted set of call ids
scored by when they started: a call whose worker died stops counting after `stale_s`, without anyone
cleaning up after it. Deployments are tried in order of calls in flight per unit of weight; equally busy
ones in a weighted random order (each comes first in proportion to its weight), so that idle deployments
share calls by weight too. A deployment whose circuit is open goes last; one that is rate limited is left by
the caller for the next (shared.jobs.dispatch), since admission decides that at the moment of the call.

A model without deployments is served as it always was: no Redis round trip, no count.
Redis being unreachable never blocks a call: the order is then by weight alone, and the log says so.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable

import redis

from shared.routing.catalog import ModelSpec
from shared.upstream.circuit_breaker import OPEN
from shared.upstream.circuit_breaker import CircuitBreaker

logger = logging.getLogger(__name__)

PREFIX = "model_router:inflight:"
# Longer than any call can last (the task's hard time limit): a call still counted after this was lost.
DEFAULT_STALE_S = 900.0


class Balancer:
    """The calls in flight on every deployment, kept in Redis, and the order to try a model's deployments in."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stale_s: float = DEFAULT_STALE_S,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._redis = client
        self._stale_s = stale_s
        self._clock = clock
        self._rng = rng

    def order(self, model: ModelSpec, *, breaker: CircuitBreaker | None = None) -> tuple[ModelSpec, ...]:
        """Return the specs of the model's deployments in the order to try them (the model alone if it has none)."""
        specs = model.served_by()
        if len(specs) == 1:
            return specs
        busy = self.in_flight(specs)
        states = breaker.states(spec.upstream_key for spec in specs) if breaker is not None else {}

        def rank(spec: ModelSpec) -> tuple[bool, float, float]:
            weight = float(next(d.weight for d in model.deployments if d.name == spec.deployment))
            # Efraimidis-Spirakis: sorting by u ** (1 / weight), largest first, puts each first in proportion to weight.
            lottery = -(self._rng() ** (1 / weight))
            return states.get(spec.upstream_key) == OPEN, busy[spec.upstream_key] / weight, lottery

        return tuple(sorted(specs, key=rank))

    def in_flight(self, specs: tuple[ModelSpec, ...]) -> dict[str, int]:
        """Return the calls in flight on each deployment (0 for all when Redis cannot be asked)."""
        since = self._clock() - self._stale_s
        try:
            pipe = self._redis.pipeline(transaction=False)
            for spec in specs:
                pipe.zcount(_key(spec), since, "+inf")
            counts = pipe.execute()
        except redis.RedisError:
            logger.warning("calls in flight unknown (Redis unreachable); balancing by weight alone")
            counts = [0] * len(specs)
        return {spec.upstream_key: int(count) for spec, count in zip(specs, counts, strict=True)}

    def begin(self, spec: ModelSpec) -> str | None:
        """Count a call starting on `spec`'s deployment; return its id for end() (None: nothing counted)."""
        if spec.deployment is None:
            return None
        call = uuid.uuid4().hex
        now = self._clock()
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zremrangebyscore(_key(spec), "-inf", now - self._stale_s)
            pipe.zadd(_key(spec), {call: now})
            pipe.expire(_key(spec), int(self._stale_s) + 60)
            pipe.execute()
        except redis.RedisError:
            logger.warning("call to %s not counted in flight (Redis unreachable)", spec.upstream_key)
            return None
        return call

    def end(self, spec: ModelSpec, call: str | None) -> None:
        """Stop counting the call begin() returned `call` for."""
        if call is None:
            return
        try:
            self._redis.zrem(_key(spec), call)
        except redis.RedisError:
            logger.warning(
                "call to %s left counted in flight until it goes stale (Redis unreachable)", spec.upstream_key
            )


def _key(spec: ModelSpec) -> str:
    return f"{PREFIX}{spec.upstream_key}"
