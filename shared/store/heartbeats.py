"""Worker liveness keys in Redis: each worker refreshes its own, the health check counts them, and the reaper
takes over the jobs of a worker whose key is gone (shared.jobs.reaper).

The worker starts its heartbeat when it is ready to consume and stops it at shutdown (worker.celery_app
connects the signals); a key outlives three missed refreshes, so a worker that died is no longer counted soon
after.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection

import redis

from shared.store import redis_clients

WORKER_KEY_PREFIX = "model_router:workers:"
# How many refresh intervals a key outlives: a worker is counted until it misses this many in a row.
MISSED_BEATS = 3
# How long one refresh may wait for Redis.
SOCKET_TIMEOUT_S = 5

logger = logging.getLogger(__name__)


class Heartbeat:
    """One worker's liveness key, refreshed every `interval_s` by a daemon thread until stopped."""

    def __init__(self, client: redis.Redis, *, worker: str, interval_s: int) -> None:
        self._client = client
        self._key = WORKER_KEY_PREFIX + worker
        self._interval_s = interval_s
        self._stop = threading.Event()

    @classmethod
    def from_url(cls, redis_url: str, *, worker: str, interval_s: int) -> Heartbeat:
        """Return the heartbeat of `worker` on a client of its own."""
        client = redis_clients.connect(redis_url, socket_timeout=SOCKET_TIMEOUT_S)
        return cls(client, worker=worker, interval_s=interval_s)

    def start(self) -> None:
        """Refresh the key now and every interval after, on a daemon thread."""
        self._stop.clear()
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def stop(self) -> None:
        """Stop refreshing; the thread deletes the key as it ends, so the worker stops being counted at once."""
        self._stop.set()

    def beat(self) -> None:
        """Refresh the key once; a Redis that cannot be reached is logged, not raised."""
        try:
            self._client.set(self._key, "1", ex=key_lifetime_s(self._interval_s))
        except redis.RedisError:
            logger.warning("heartbeat could not reach Redis")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self._interval_s)
        with contextlib.suppress(redis.RedisError):
            self._client.delete(self._key)


def key_lifetime_s(interval_s: int) -> int:
    """Return how long a key refreshed every `interval_s` outlives its last refresh."""
    return interval_s * MISSED_BEATS


def find_alive(client: redis.Redis, workers: Collection[str]) -> set[str] | None:
    """Return those of `workers` whose key lives; None if Redis cannot be asked (nobody is then known dead)."""
    names = sorted(workers)
    pipeline = client.pipeline(transaction=False)
    for name in names:
        pipeline.exists(WORKER_KEY_PREFIX + name)
    try:
        found = pipeline.execute()
    except redis.RedisError:
        logger.warning("could not ask Redis which workers are alive")
        return None
    return {name for name, exists in zip(names, found, strict=True) if exists}


def count_alive_workers(client: redis.Redis) -> int:
    """Return how many workers refreshed their key within its lifetime."""
    return sum(1 for _ in client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=100))
