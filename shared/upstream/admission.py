"""Admission control per model: call each upstream at the rate it admits, learned from what it answers.

Every worker process shares one token bucket per model in Redis, kept as GCRA "theoretical arrival times":
one for requests, one for tokens (each call is counted at its bound, as OpenAI counts `max_tokens` at
admission). A bucket holds `burst_s` seconds' worth of its rate (at least one call) and refills continuously.
Until an upstream has answered once, one call at a time goes to it (a scout, replaced after `scout_s` if it
never reports), so that a burst does not discover the limit by failing; once it has answered, nothing is
limited that it did not say: the `x-ratelimit-limit-requests` and
`x-ratelimit-limit-tokens` headers (per minute) set the rates, a 429's `retry-after-ms` / `Retry-After` (or the
exhausted limit's `x-ratelimit-reset-*`) keeps every caller out until it ends, and `x-ratelimit-remaining-* = 0`
on a success does the same. Learned limits expire after `LEARNED_TTL_S` without news, so a raised limit is
picked up.

`take()` is one Lua script call: it either admits now, or tells how long until this caller's turn and, if the
caller can wait that long, reserves that turn for it (so that waiting callers come back one at a time, at the
rate admitted, never all at once).

Redis being unreachable never blocks a call: admission then admits and says so in the log.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass

import redis

logger = logging.getLogger(__name__)

PREFIX = "model_router:admission:"
# How long learned limits are kept without a new answer confirming them.
LEARNED_TTL_S = 3600
# A 429 that says nothing of when to come back keeps callers out this long.
DEFAULT_BLOCK_S = 1.0

REQUESTS = "requests"
TOKENS = "tokens"
RETRY_AFTER = "retry_after"
# The first call to a model nothing was heard from, and the callers waiting for its answer.
SCOUT = "scout"
SCOUTING = "scouting"
# How soon a caller waiting for the scout's answer asks again.
SCOUTING_POLL_S = 0.05

# The hash holds: rr, tr (requests and tokens admitted per second; absent: not known), rt, tt (their theoretical
# arrival times), blocked (no call before), why (the limit that blocked). ARGV: now, the call's tokens, the longest
# wait the caller accepts, burst_s, how long a scout's answer is waited for, LEARNED_TTL_S, how soon to ask again while
# waiting for it. Returns {reserved (0|1), wait, limit, rr, tr}; numbers as strings (Lua numbers
# come back truncated to integers).
_TAKE = """
local now, cost, max_wait, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local f = redis.call('HMGET', KEYS[1], 'rr', 'tr', 'rt', 'tt', 'blocked', 'why', 'seen', 'scout')
local rr, tr, blocked = tonumber(f[1] or '0'), tonumber(f[2] or '0'), tonumber(f[5] or '0')
if rr == 0 and tr == 0 and blocked <= now then
  if f[7] then
    return {1, '0', '', '0', '0'}
  end
  -- Nothing heard from this upstream yet: one call goes first and its answer tells the limits.
  local scout, scout_s = tonumber(f[8] or '0'), tonumber(ARGV[5])
  if now - scout >= scout_s then
    redis.call('HSET', KEYS[1], 'scout', ARGV[1])
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
    return {1, '0', 'scout', '0', '0'}
  end
  return {0, tostring(math.min(tonumber(ARGV[7]), scout + scout_s - now)), 'scouting', '0', '0'}
end
local start, limit = now, ''
if blocked > now then
  start, limit = blocked, f[6] or 'retry_after'
end
local at, rt, tt = start, nil, nil
if rr > 0 then
  rt = math.max(tonumber(f[3] or '0'), start) + 1 / rr
  local ok = rt - math.max(burst, 1 / rr)
  if ok > at then at, limit = ok, 'requests' end
end
if tr > 0 then
  tt = math.max(tonumber(f[4] or '0'), start) + cost / tr
  local ok = tt - math.max(burst, cost / tr)
  if ok > at then at, limit = ok, 'tokens' end
end
local wait = at - now
if wait > max_wait then
  return {0, tostring(wait), limit, tostring(rr), tostring(tr)}
end
if rt then redis.call('HSET', KEYS[1], 'rt', tostring(rt)) end
if tt then redis.call('HSET', KEYS[1], 'tt', tostring(tt)) end
return {1, tostring(wait), limit, tostring(rr), tostring(tr)}
"""

# ARGV: now, requests per minute ('' unknown), tokens per minute ('' unknown), blocked until ('' none), why, ttl,
# burst_s, requests remaining ('' unknown), tokens remaining ('' unknown). What remains moves the buckets to
# match the upstream's (never forward: a turn already reserved stays reserved).
_LEARN = """
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'rr', tostring(tonumber(ARGV[2]) / 60)) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'tr', tostring(tonumber(ARGV[3]) / 60)) end
local now, burst = tonumber(ARGV[1]), tonumber(ARGV[7])
local f = redis.call('HMGET', KEYS[1], 'rr', 'tr', 'rt', 'tt')
for i, remaining in ipairs({ARGV[8], ARGV[9]}) do
  local rate = tonumber(f[i] or '0')
  if remaining ~= '' and rate > 0 then
    local full = now + math.max(burst, 1 / rate) - tonumber(remaining) / rate
    if full > tonumber(f[i + 2] or '0') then
      redis.call('HSET', KEYS[1], i == 1 and 'rt' or 'tt', tostring(full))
    end
  end
end
if ARGV[4] ~= '' then
  local f = redis.call('HMGET', KEYS[1], 'blocked')
  if tonumber(ARGV[4]) > tonumber(f[1] or '0') then
    redis.call('HSET', KEYS[1], 'blocked', ARGV[4], 'why', ARGV[5])
  end
end
redis.call('HSET', KEYS[1], 'seen', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return 1
"""


@dataclass(frozen=True)
class RateLimits:
    """What an upstream's answer said of its limits (None: not said)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimits | None:
        """Read OpenAI's rate-limit headers; None when the answer carries none of them."""
        limits = cls(
            limit_requests=_count(headers.get("x-ratelimit-limit-requests")),
            limit_tokens=_count(headers.get("x-ratelimit-limit-tokens")),
            remaining_requests=_count(headers.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_count(headers.get("x-ratelimit-remaining-tokens")),
            reset_requests_s=duration_s(headers.get("x-ratelimit-reset-requests")),
            reset_tokens_s=duration_s(headers.get("x-ratelimit-reset-tokens")),
            retry_after_s=retry_after_s(headers),
        )
        return None if limits == cls() else limits

    @property
    def exhausted(self) -> str | None:
        """The limit the answer says is used up, if any."""
        if self.remaining_requests == 0:
            return REQUESTS
        if self.remaining_tokens == 0:
            return TOKENS
        return None

    def block_s(self, *, throttled: bool) -> float | None:
        """How long no call may be made: a 429's Retry-After, else the exhausted limit's reset."""
        if throttled and self.retry_after_s is not None:
            return self.retry_after_s
        exhausted = self.exhausted
        if exhausted == REQUESTS and self.limit_requests:
            # The next call is admitted once one request is back, at the limit's rate.
            return 60 / self.limit_requests
        if exhausted == REQUESTS and self.reset_requests_s is not None:
            return self.reset_requests_s
        if exhausted == TOKENS and self.reset_tokens_s is not None:
            return self.reset_tokens_s
        return DEFAULT_BLOCK_S if throttled else None


@dataclass(frozen=True)
class Ticket:
    """What admission answered: `wait_s` until the call's turn (0: now), reserved for it when `reserved`."""

    wait_s: float = 0.0
    reserved: bool = True
    # The limit that makes the caller wait: requests | tokens | retry_after ('' when admitted at once).
    limit: str = ""
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0

    def describe(self, model: str) -> str:
        """Say which of the model's limits holds the call back."""
        if self.limit == REQUESTS:
            return f"{model}: rate limited by the upstream's requests limit ({self.requests_per_minute:g}/min)"
        if self.limit == TOKENS:
            return f"{model}: rate limited by the upstream's tokens limit ({self.tokens_per_minute:g}/min)"
        if self.limit == SCOUTING:
            return f"{model}: waiting for its first answer to tell its rate limits"
        return f"{model}: rate limited (the upstream asked to retry after {self.wait_s:.1f} s)"


ADMITTED = Ticket()


class Admission:
    """The admission buckets of every model, kept in Redis."""

    def __init__(
        self, client: redis.Redis, *, burst_s: float = 1.0, scout_s: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = client
        self._burst_s = burst_s
        self._scout_s = scout_s
        self._clock = clock
        self._take = client.register_script(_TAKE)
        self._learn = client.register_script(_LEARN)

    def take(self, model: str, *, tokens: int, max_wait_s: float) -> Ticket:
        """Ask for a call of `tokens` (its bound) to `model`; reserve its turn if it comes within `max_wait_s`."""
        args = [repr(self._clock()), tokens, repr(max(max_wait_s, 0.0)), repr(self._burst_s), repr(self._scout_s),
                LEARNED_TTL_S, repr(SCOUTING_POLL_S)]  # fmt: skip
        try:
            reserved, wait, limit, rr, tr = self._take(keys=[_key(model)], args=args)
        except redis.RedisError:
            logger.warning("admission skipped (Redis unreachable); admitting a call to %s", model)
            return ADMITTED
        return Ticket(
            wait_s=max(float(wait), 0.0),
            reserved=bool(reserved),
            limit=limit.decode() if isinstance(limit, bytes) else str(limit),
            requests_per_minute=round(float(rr) * 60, 6),
            tokens_per_minute=round(float(tr) * 60, 6),
        )

    def blocked_until(self, models: Iterable[str]) -> dict[str, float]:
        """Return until when each model's upstream asked to be left alone (0: never), read in one round trip.

        That is the time a 429 or a used-up limit set (see learn()); a deployment's balancer orders by it.
        """
        models = list(models)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for model in models:
                pipe.hget(_key(model), "blocked")
            until = pipe.execute()
        except redis.RedisError:
            logger.warning("rate limits unknown (Redis unreachable); treating every upstream as admitting")
            return dict.fromkeys(models, 0.0)
        return {model: float(value or 0) for model, value in zip(models, until, strict=True)}

    def learn(self, model: str, limits: RateLimits | None, *, throttled: bool, known: Ticket | None = None) -> None:
        """Take in what an answer of `model` said of its limits; a 429 (`throttled`) always blocks for a while.

        `known` is the ticket the call was admitted with: an answer saying nothing new (the same limits, some
        left) costs no round trip.
        """
        scouted = known is not None and known.limit == SCOUT
        if limits is None and not throttled and not scouted:
            return
        limits = limits or RateLimits()
        block = limits.block_s(throttled=throttled)
        rpm, tpm = limits.limit_requests, limits.limit_tokens
        if (
            block is None
            and not scouted
            and known is not None
            and _same(rpm, known.requests_per_minute)
            and (_same(tpm, known.tokens_per_minute))
        ):
            return
        now = self._clock()
        why = limits.exhausted or RETRY_AFTER
        args = [
            repr(now), _text(rpm), _text(tpm),
            "" if block is None else repr(now + block), why, LEARNED_TTL_S, repr(self._burst_s),
            _text(limits.remaining_requests), _text(limits.remaining_tokens),
        ]  # fmt: skip
        try:
            self._learn(keys=[_key(model)], args=args)
        except redis.RedisError:
            logger.warning("rate limits of %s not learned (Redis unreachable)", model)


_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m(?!s))?(?:{_NUMBER}s)?(?:{_NUMBER}ms)?")


def duration_s(value: str | None) -> float | None:
    """Parse OpenAI's reset durations ("1s", "6m0s", "250ms", "1h2m3.5s") or plain seconds."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.fullmatch(value)
        if not value or parts is None:
            return None
        hours, minutes, secs, millis = (float(part or 0) for part in parts.groups())
        seconds = hours * 3600 + minutes * 60 + secs + millis / 1000
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Return how long a 429 asks to wait: `retry-after-ms` if given, else `Retry-After` in seconds."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    return _number(headers.get("retry-after"))


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _count(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(value: int | None) -> str | int:
    return "" if value is None else value


def _same(said: int | None, known: float) -> bool:
    return said is None or said == known


def _key(model: str) -> str:
    return f"{PREFIX}{model}"
