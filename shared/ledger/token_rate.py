"""Tokens per minute per API key: a fixed one-minute window in Redis, shared by every web process and worker.

A request is counted at accept by its bound (shared.ledger.call_bound: the prompt tokens one call can be billed
plus its max_tokens), since its real tokens are known only once it has run. The worker corrects the window the
request was counted in by (real tokens - bound) once the job has finished, never below zero: a request that used
less gives the rest back to its minute, one that used more (retries, fallbacks) is charged the difference. A
window that has ended is not corrected: its minute is over, and the next one starts from zero anyway.

A request whose bound alone is above the limit could never be accepted: it is refused without a Retry-After.
Redis being unreachable lets requests through (as the requests-per-minute limiter does) and skips corrections.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import redis

from shared.errors import TokenRateExceeded
from shared.ledger.call_bound import CallBound

logger = logging.getLogger(__name__)

WINDOW_S = 60
NAMESPACE = "model_router_tpm"
# Windows and job records outlive their minute a little, so that a job finishing just after still finds them.
KEEP_S = 2 * WINDOW_S

# KEYS: the window, the job's record. ARGV: tokens, limit, seconds to keep. Returns -1 if counted, else the
# tokens the window already holds (nothing is counted then).
_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(ARGV[1])
if used + tokens > tonumber(ARGV[2]) then return used end
redis.call('INCRBY', KEYS[1], tokens)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], KEYS[1] .. '|' .. ARGV[1], 'EX', ARGV[3])
return -1
"""
# KEYS: the window. ARGV: the change. A window that has expired stays gone.
_CORRECT = """
local used = redis.call('GET', KEYS[1])
if not used then return -1 end
local corrected = math.max(0, tonumber(used) + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], corrected, 'KEEPTTL')
return corrected
"""


def tokens_of(bound: CallBound) -> int:
    """Return what a request counts at accept: the most tokens one call of it can be billed."""
    return bound.prompt_tokens + bound.completion_tokens


class TokenWindows:
    """The keys' tokens-per-minute windows in one Redis."""

    def __init__(self, client: redis.Redis, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._clock = clock
        self._take = client.register_script(_TAKE)
        self._correct = client.register_script(_CORRECT)

    def take(self, *, api_key_id: int, job_id: str, tokens: int, limit: int) -> None:
        """Count `tokens` for the key's job in this minute, or raise TokenRateExceeded if they do not fit."""
        details: dict[str, object] = {"limit": "tpm", "tpm": limit, "tokens": tokens}
        if tokens > limit:
            raise TokenRateExceeded(
                f"this request may use {tokens} tokens, more than the key's limit of {limit} tokens per minute: "
                "lower max_tokens or shorten the prompt",
                retry_after_s=None,
                details=details,
            )
        now = self._clock()
        window = self._window_key(api_key_id, now)
        try:
            used = int(self._take(keys=[window, self._job_key(job_id)], args=[tokens, limit, KEEP_S]))
        except redis.RedisError:
            logger.warning("tokens per minute cannot be counted: Redis is unreachable")
            return
        if used >= 0:
            raise TokenRateExceeded(
                f"the key's limit of {limit} tokens per minute is reached ({used} counted this minute, "
                f"this request may use {tokens})",
                retry_after_s=max(1, math.ceil(WINDOW_S - now % WINDOW_S)),
                details={**details, "used": used},
            )

    def give_back(self, job_id: str) -> None:
        """Uncount a job that was refused after it was counted (its budget did not fit, say)."""
        self.settle(job_id, actual_tokens=lambda: 0)

    def settle(self, job_id: str, *, actual_tokens: Callable[[], int]) -> int | None:
        """Correct the window the job was counted in by its real tokens; return the change made, or None.

        `actual_tokens` is asked only for a job that was counted (its key has a limit), and once: the job's
        record goes with the first correction.
        """
        try:
            record = self._client.getdel(self._job_key(job_id))
        except redis.RedisError:
            logger.warning("tokens per minute cannot be corrected: Redis is unreachable job_id=%s", job_id)
            return None
        if record is None:
            return None
        window, _, counted = (record.decode() if isinstance(record, bytes) else record).rpartition("|")
        change = actual_tokens() - int(counted)
        try:
            self._correct(keys=[window], args=[change])
        except redis.RedisError:
            logger.warning("tokens per minute cannot be corrected: Redis is unreachable job_id=%s", job_id)
            return None
        return change

    def used(self, api_key_id: int) -> int:
        """Return the tokens counted for the key in this minute."""
        return int(self._client.get(self._window_key(api_key_id, self._clock())) or 0)

    @staticmethod
    def _window_key(api_key_id: int, now: float) -> str:
        return f"{NAMESPACE}:key:{api_key_id}:{int(now // WINDOW_S)}"

    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{NAMESPACE}:job:{job_id}"
