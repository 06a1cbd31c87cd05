"""Worker liveness keys in Redis: workers refresh them, the health check counts them."""

from __future__ import annotations

import redis

WORKER_KEY_PREFIX = "model_router:workers:"


def count_alive_workers(client: redis.Redis) -> int:
    """Return how many workers refreshed their key within its lifetime."""
    return sum(1 for _ in client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=100))
