"""Circuit breakers per model, shared by every worker process through Redis.

closed → open: at least `min_failures` failures in the current `window_s`, making up at least
`failure_rate` of the window's calls. open → half-open: once `cooldown_s` has passed, up to
`half_open_probes` calls are let through. half-open → closed on a probe's success, → open on its failure.
A probe that never reports (its worker died) stops counting once a cooldown has passed since the probes
were let through: the next call is let through as a new probe.

Every transition is one Lua script on the model's Redis hash, so concurrent callers in any number of
processes see one order of events: exactly `half_open_probes` calls pass a half-open circuit, never one more.
Each transition also starts a new generation. `allow()` hands out a Permit naming the generation it was
given in, and a result counts only in the generation its call started in: a call started before the circuit
opened cannot close it by succeeding late, nor can a late failure reopen a circuit that has since closed.

Redis being unreachable never blocks a call: the breaker then fails open and says so in the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from shared.config import Settings

logger = logging.getLogger(__name__)

PREFIX = "model_router:circuit:"
CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

# The generation of a permit given while Redis could not be asked: its result is not counted.
UNKNOWN_GENERATION = -1

# The hash holds: state (absent: closed), gen, since (when it opened or last let probes through), probes
# (let through since then), window_at, calls, fails (the closed circuit's current window).
_ALLOW = """
local now, cooldown, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'state', 'gen', 'since', 'probes')
local state, gen = f[1] or 'closed', tonumber(f[2] or '0')
if state == 'closed' then
  return {gen, 0}
end
if now - tonumber(f[3] or '0') < cooldown then
  if state == 'open' or tonumber(f[4] or '0') >= limit then
    return false
  end
  redis.call('HINCRBY', KEYS[1], 'probes', 1)
  return {gen, 1}
end
if state == 'open' then
  gen = gen + 1
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'gen', gen, 'since', ARGV[1], 'probes', 1)
return {gen, 1}
"""

# ARGV: the permit's generation, the outcome (ok | failed | neutral), now, window_s, min_failures, failure_rate.
# Returns the state the circuit moved to, or false when nothing changed state.
_RECORD = """
local gen, outcome, now = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'state', 'gen', 'window_at', 'calls', 'fails', 'probes')
local state = f[1] or 'closed'
if gen ~= tonumber(f[2] or '0') or state == 'open' then
  return false
end
if state == 'half_open' then
  if outcome == 'ok' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'gen', gen + 1, 'window_at', ARGV[3], 'calls', 0, 'fails', 0)
    return 'closed'
  elseif outcome == 'failed' then
    redis.call('HSET', KEYS[1], 'state', 'open', 'gen', gen + 1, 'since', ARGV[3], 'probes', 0)
    return 'open'
  end
  -- A probe that learned nothing gives its place back.
  if tonumber(f[6] or '0') > 0 then
    redis.call('HINCRBY', KEYS[1], 'probes', -1)
  end
  return false
end
if outcome == 'neutral' then
  return false
end
local window_at, calls, fails = tonumber(f[3] or '0'), tonumber(f[4] or '0'), tonumber(f[5] or '0')
if now - window_at >= tonumber(ARGV[4]) then
  window_at, calls, fails = now, 0, 0
end
calls = calls + 1
if outcome == 'failed' then
  fails = fails + 1
  if fails >= tonumber(ARGV[5]) and fails / calls >= tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'gen', gen + 1, 'since', ARGV[3], 'probes', 0, 'calls', 0,
               'fails', 0)
    return 'open'
  end
end
redis.call('HSET', KEYS[1], 'window_at', tostring(window_at), 'calls', calls, 'fails', fails)
return false
"""


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


@dataclass(frozen=True)
class Permit:
    """Leave to call `model` once, given in the circuit's `generation`; its result is reported with it."""

    model: str
    generation: int
    # A half-open circuit's probe: one call that decides whether the circuit closes.
    probe: bool = False


class CircuitBreaker:
    """The breakers of every model, kept in Redis."""

    def __init__(self, client: redis.Redis, policy: BreakerPolicy, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._policy = policy
        self._clock = clock
        self._allow = client.register_script(_ALLOW)
        self._record = client.register_script(_RECORD)

    def state(self, model: str) -> str:
        """Return the model's state as the next call would see it."""
        return self.states([model])[model]

    def states(self, models: Iterable[str]) -> dict[str, str]:
        """Return the state of each model, read in one round trip."""
        models = list(models)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for model in models:
                pipe.hmget(_key(model), "state", "since")
            fields = pipe.execute()
        except redis.RedisError:
            logger.warning("circuit states unknown (Redis unreachable); treating them as closed")
            return dict.fromkeys(models, CLOSED)
        return {model: self._seen(state, since) for model, (state, since) in zip(models, fields, strict=True)}

    def allow(self, model: str) -> Permit | None:
        """Return leave to call `model` now, or None while its circuit is open (or its probes are all out)."""
        args = [repr(self._clock()), self._policy.cooldown_s, self._policy.half_open_probes]
        try:
            granted = self._allow(keys=[_key(model)], args=args)
        except redis.RedisError:
            logger.warning("circuit check skipped (Redis unreachable); allowing a call to %s", model)
            return Permit(model, UNKNOWN_GENERATION)
        if granted is None:
            return None
        generation, probe = granted
        return Permit(model, int(generation), probe=bool(probe))

    def reopens_in(self, model: str) -> float:
        """Return how long until a refused call to `model` may be let through as a probe (0 if unknown)."""
        try:
            since = self._redis.hget(_key(model), "since")
        except redis.RedisError:
            return 0.0
        return max(float(since or 0) + self._policy.cooldown_s - self._clock(), 0.0)

    def record_success(self, permit: Permit) -> None:
        """Count a success; a probe's success closes the circuit."""
        self._report(permit, "ok")

    def record_failure(self, permit: Permit) -> None:
        """Count a failure; open the circuit when the window's failures cross the policy, or a probe failed."""
        self._report(permit, "failed")

    def release(self, permit: Permit) -> None:
        """Report a call that says nothing about the upstream's health; a probe gives its place back."""
        if permit.probe:
            self._report(permit, "neutral")

    def _report(self, permit: Permit, outcome: str) -> None:
        if permit.generation == UNKNOWN_GENERATION:
            return
        policy = self._policy
        args = [permit.generation, outcome, repr(self._clock()), policy.window_s, policy.min_failures,
                policy.failure_rate]  # fmt: skip
        try:
            moved = self._record(keys=[_key(permit.model)], args=args)
        except redis.RedisError:
            logger.warning("circuit %s not recorded (Redis unreachable) for %s", outcome, permit.model)
            return
        if moved == b"open":
            logger.warning("circuit opened for %s", permit.model)
        elif moved == b"closed":
            logger.info("circuit closed for %s", permit.model)

    def _seen(self, state: bytes | None, since: bytes | None) -> str:
        if state is None:
            return CLOSED
        if state == b"open" and self._clock() - float(since or 0) >= self._policy.cooldown_s:
            return HALF_OPEN
        return state.decode()


def _key(model: str) -> str:
    return f"{PREFIX}{model}"
