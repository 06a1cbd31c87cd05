"""Completion notifications: a worker announces a finished job; waiting web requests wake on it."""

from __future__ import annotations

import logging

import redis

logger = logging.getLogger(__name__)

JOB_DONE_CHANNEL = "model_router:jobs:done"


def publish_job_done(client: redis.Redis, job_id: str) -> None:
    """Announce that `job_id` reached a terminal state; a lost message only delays waiters to their timeout."""
    try:
        client.publish(JOB_DONE_CHANNEL, job_id)
    except redis.RedisError:
        logger.warning("could not announce job completion job_id=%s", job_id, exc_info=True)
