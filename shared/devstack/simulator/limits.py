"""The simulator's rate limits: requests and tokens per minute per model, enforced and reported like OpenAI.

Each limit is a token bucket holding one second of its per-minute rate (at least one request), refilled
continuously: a limit of 300 requests per minute admits 5 a second, not 300 at once, as OpenAI enforces its
limits over short windows. A request is counted at its prompt tokens plus its `max_tokens`, as OpenAI counts it
when admitting it. Every answer carries the `x-ratelimit-*` headers; a request over a limit is answered 429 with
`Retry-After` (whole seconds) and `retry-after-ms`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    level: float
    at: float


@dataclass(frozen=True)
class Verdict:
    """Whether a request is admitted, and the headers that say so."""

    admitted: bool
    headers: dict[str, str]
    # The limit that refused it: "requests" | "tokens".
    limit: str | None = None


class Limiter:
    """The buckets of every (model, limit) of one simulator."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def check(self, model: str, *, rpm: int | None, tpm: int | None, tokens: int) -> Verdict:
        """Count a request of `tokens` against `model`'s limits (None: unlimited); refuse it if one is used up."""
        now = self._clock()
        limits = [(name, per_minute, cost) for name, per_minute, cost in
                  (("requests", rpm, 1), ("tokens", tpm, tokens)) if per_minute]  # fmt: skip
        waits: dict[str, float] = {}
        for name, per_minute, cost in limits:
            bucket, rate, capacity = self._refilled(model, name, per_minute, now)
            # A request larger than the bucket passes when the bucket is full, as OpenAI's would.
            need = min(cost, capacity)
            if bucket.level < need:
                waits[name] = (need - bucket.level) / rate
        if not waits:
            for name, _, cost in limits:
                self._buckets[(model, name)].level -= cost
        headers = {}
        for name, per_minute, _ in limits:
            bucket, rate, capacity = self._refilled(model, name, per_minute, now)
            headers[f"x-ratelimit-limit-{name}"] = str(per_minute)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(math.floor(bucket.level), 0))
            headers[f"x-ratelimit-reset-{name}"] = format_duration((capacity - bucket.level) / rate)
        if not waits:
            return Verdict(True, headers)
        limit = max(waits, key=lambda name: waits[name])
        wait = waits[limit]
        headers["retry-after-ms"] = str(math.ceil(wait * 1000))
        headers["Retry-After"] = str(max(math.ceil(wait), 1))
        return Verdict(False, headers, limit=limit)

    def _refilled(self, model: str, name: str, per_minute: int, now: float) -> tuple[_Bucket, float, float]:
        rate = per_minute / 60
        capacity = max(rate, 1.0)
        bucket = self._buckets.setdefault((model, name), _Bucket(capacity, now))
        bucket.level = min(capacity, bucket.level + (now - bucket.at) * rate)
        bucket.at = now
        return bucket, rate, capacity


def format_duration(seconds: float) -> str:
    """Write a duration as OpenAI's reset headers do: "250ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{round(secs, 3):g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text
