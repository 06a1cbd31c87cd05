"""Balancing a model's calls across its deployments: the soonest to answer first, throttled and open ones last.

A catalog model may be served by several deployments (servers or keys, shared.routing.catalog.Deployment).
Each one's calls in flight are counted in Redis, shared by every worker process, as a sorted set of call ids
scored by when they started: a call whose worker died stops counting after `stale_s`, without anyone
cleaning up after it. Each one's pace is kept in Redis too: a moving average (weight `SMOOTHING` for the newest
call) of the seconds and of the output tokens of its successful calls, whose ratio is its seconds per output
token: long and short answers count by their length, so a few long ones do not make a deployment look slow.

Deployments are tried in order of expected wait, pace x (1 + calls in flight / weight): with equal paces, the
least busy per unit of weight first, as a deployment of weight 2 serves twice the calls; with equal load, the
fastest first. Paces are compared to the fastest's in steps of `PACE_STEP` (25 %), so that noise in the
measurements does not decide the order: equal expected waits come in a weighted random order (each first in
proportion to its weight), so that idle deployments of one pace share calls by weight. A deployment with no
recent pace (new, or passed over for `PACE_TTL_S` while slower, and measured again this way) is taken at the
mean of the others'; with none known, all are equal and only the calls in flight count.

Before that order come two rules. A deployment its upstream asked to leave alone (a 429's Retry-After, or a
limit it said is used up: what shared.upstream.admission keeps) goes after the others until that time, without
a call to find out; one whose circuit is open goes last of all. A rate limit admission only paces (its own
buckets) is still found at the moment of the call, and left by the caller for the next (shared.jobs.dispatch).

A model without deployments is served as it always was: no Redis round trip, no count, no pace.
Redis being unreachable never blocks a call: the order is then by weight alone, and the log says so.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping

import redis

from shared.routing.catalog import ModelSpec
from shared.upstream.admission import Admission
from shared.upstream.attempts import AttemptRecord
from shared.upstream.circuit_breaker import OPEN
from shared.upstream.circuit_breaker import CircuitBreaker

logger = logging.getLogger(__name__)

PREFIX = "model_router:inflight:"
PACE_PREFIX = "model_router:pace:"
# Longer than any call can last (the task's hard time limit): a call still counted after this was lost.
DEFAULT_STALE_S = 900.0
# The newest call's share of the moving averages: about the last ten calls make a pace.
SMOOTHING = 0.2
# A pace no call confirmed for this long is forgotten: a slower deployment passed over gets measured again.
PACE_TTL_S = 600.0
# Paces within this factor of each other (on a grid anchored at the fastest) count as equal.
PACE_STEP = 1.25
# Faster than any upstream answers: a pace measured as 0 (a clock too coarse for the call) counts as this.
MIN_PACE = 1e-6

# The hash holds s, t (the moving averages of a successful call's seconds and output tokens) and at (when the
# last one ended). ARGV: the call's seconds, its tokens, now, SMOOTHING, PACE_TTL_S. A forgotten pace starts over.
_LEARN = """
local seconds, tokens, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local alpha, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local f = redis.call('HMGET', KEYS[1], 's', 't', 'at')
if f[1] and f[2] and now - tonumber(f[3] or '0') < ttl then
  seconds = tonumber(f[1]) + alpha * (seconds - tonumber(f[1]))
  tokens = tonumber(f[2]) + alpha * (tokens - tonumber(f[2]))
end
redis.call('HSET', KEYS[1], 's', tostring(seconds), 't', tostring(tokens), 'at', ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
return 1
"""


class Balancer:
    """The calls in flight and the pace of every deployment, kept in Redis, and the order to try a model's in."""

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
        self._learn = client.register_script(_LEARN)

    def order(
        self, model: ModelSpec, *, breaker: CircuitBreaker | None = None, admission: Admission | None = None
    ) -> tuple[ModelSpec, ...]:
        """Return the specs of the model's deployments in the order to try them (the model alone if it has none)."""
        specs = model.served_by()
        if len(specs) == 1:
            return specs
        keys = [spec.upstream_key for spec in specs]
        busy, known = self._read(specs)
        paces = _comparable(known, keys)
        states = breaker.states(keys) if breaker is not None else {}
        blocked = admission.blocked_until(keys) if admission is not None else {}
        now = self._clock()

        def rank(spec: ModelSpec) -> tuple[bool, float, float, float]:
            key = spec.upstream_key
            weight = float(next(d.weight for d in model.deployments if d.name == spec.deployment))
            # Efraimidis-Spirakis: sorting by u ** (1 / weight), largest first, puts each first in proportion to weight.
            lottery = -(self._rng() ** (1 / weight))
            # A throttled deployment waits its turn behind the others; of two, the one back sooner comes first.
            throttled = max(blocked.get(key, 0.0) - now, 0.0)
            return states.get(key) == OPEN, throttled, paces[key] * (1 + busy[key] / weight), lottery

        return tuple(sorted(specs, key=rank))

    def in_flight(self, specs: tuple[ModelSpec, ...]) -> dict[str, int]:
        """Return the calls in flight on each deployment (0 for all when Redis cannot be asked)."""
        return self._read(specs)[0]

    def paces(self, keys: Iterable[str]) -> dict[str, float]:
        """Return the recent seconds per output token of each deployment that has one (none when Redis is down)."""
        keys = list(keys)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(_pace_key(key), "s", "t", "at")
            fields = pipe.execute()
        except redis.RedisError:
            logger.warning("deployment paces unknown (Redis unreachable)")
            return {}
        return self._known(keys, fields)

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

    def learn(self, spec: ModelSpec, attempt: AttemptRecord) -> None:
        """Take a successful call's duration and length into its deployment's pace; anything else says nothing."""
        if spec.deployment is None or attempt.outcome != "ok" or attempt.usage_invalid:
            return
        # An answer without output still took the call's time: count it as one token.
        args = [repr(attempt.latency_ms / 1000), max(attempt.completion_tokens, 1), repr(self._clock()),
                repr(SMOOTHING), repr(PACE_TTL_S)]  # fmt: skip
        try:
            self._learn(keys=[_pace_key(spec.upstream_key)], args=args)
        except redis.RedisError:
            logger.warning("pace of %s not learned (Redis unreachable)", spec.upstream_key)

    def _read(self, specs: tuple[ModelSpec, ...]) -> tuple[dict[str, int], dict[str, float]]:
        """Return each deployment's calls in flight and the paces known, in one round trip."""
        since = self._clock() - self._stale_s
        keys = [spec.upstream_key for spec in specs]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for spec in specs:
                pipe.zcount(_key(spec), since, "+inf")
                pipe.hmget(_pace_key(spec.upstream_key), "s", "t", "at")
            replies = pipe.execute()
        except redis.RedisError:
            logger.warning("calls in flight unknown (Redis unreachable); balancing by weight alone")
            return dict.fromkeys(keys, 0), {}
        counts = {key: int(count) for key, count in zip(keys, replies[::2], strict=True)}
        return counts, self._known(keys, replies[1::2])

    def _known(self, keys: list[str], fields: list[list[bytes | None]]) -> dict[str, float]:
        now = self._clock()
        paces = {}
        for key, (seconds, tokens, at) in zip(keys, fields, strict=True):
            if seconds is None or tokens is None or now - float(at or 0) >= PACE_TTL_S:
                continue
            paces[key] = float(seconds) / max(float(tokens), 1.0)
        return paces


def _comparable(known: Mapping[str, float], keys: list[str]) -> dict[str, float]:
    """Return each deployment's pace on the grid of PACE_STEP anchored at the fastest; one not known at the mean."""
    if not known:
        return dict.fromkeys(keys, 1.0)
    mean = sum(known.values()) / len(known)
    paces = {key: max(known.get(key, mean), MIN_PACE) for key in keys}
    fastest = min(paces.values())
    return {key: fastest * PACE_STEP ** math.floor(math.log(pace / fastest, PACE_STEP)) for key, pace in paces.items()}


def _key(spec: ModelSpec) -> str:
    return f"{PREFIX}{spec.upstream_key}"


def _pace_key(upstream_key: str) -> str:
    return f"{PACE_PREFIX}{upstream_key}"
