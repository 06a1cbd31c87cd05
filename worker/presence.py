"""Which workers are alive, for the reaper: those whose heartbeat key lives, and those that answer a ping.

A worker's key can lapse while the worker runs: its heartbeat thread may lag, or lose its Redis connection,
for three refreshes. So a worker without a key is pinged through the broker, which its consumer answers
whatever its heartbeat thread does, and only one that answers neither is taken for dead. Whatever cannot be
asked makes the answer unknown (None), and the reaper then leaves every running job to its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from shared.store import heartbeats

logger = logging.getLogger(__name__)

# How long a ping waits for the workers it asks: a living consumer answers within milliseconds.
PING_TIMEOUT_S = 1.0


def find_alive(app: Celery, client: redis.Redis, workers: Collection[str]) -> set[str] | None:
    """Return those of `workers` that are alive; None if Redis or the broker cannot be asked."""
    alive = heartbeats.find_alive(client, workers)
    if alive is None:
        return None
    silent = sorted(set(workers) - alive)
    if not silent:
        return alive
    try:
        replies = app.control.ping(destination=silent, timeout=PING_TIMEOUT_S) or []
    except (OperationalError, redis.RedisError, OSError):
        logger.warning("could not ping workers without a heartbeat")
        return None
    answered = {name for reply in replies for name in reply}
    if answered:
        logger.warning("workers answered a ping without a heartbeat key: %s", ", ".join(sorted(answered)))
    return alive | answered
