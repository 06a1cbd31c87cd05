"""Completion notifications: a worker announces a finished job; waiting web requests wake on it.

An announcement is the job id, followed by the finished job's body (as the API shows it) when the announcer
has it at hand, so that a waiting request can answer without reading the job back from the database.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import redis

logger = logging.getLogger(__name__)

JOB_DONE_CHANNEL = "model_router:jobs:done"


def publish_job_done(client: redis.Redis, job_id: str, body: dict[str, Any] | None = None) -> None:
    """Announce that `job_id` reached a terminal state; a lost message only delays waiters to their timeout."""
    message = job_id if body is None else f"{job_id} {json.dumps(body, default=_number)}"
    try:
        client.publish(JOB_DONE_CHANNEL, message)
    except redis.RedisError:
        logger.warning("could not announce job completion job_id=%s", job_id, exc_info=True)


def job_id_of(message: bytes) -> str:
    """Return the id an announcement is about (cheap: the body is not decoded)."""
    return message.split(b" ", 1)[0].decode()


def body_of(message: bytes) -> dict[str, Any] | None:
    """Return the finished body an announcement carries, if any."""
    _, _, body = message.partition(b" ")
    return json.loads(body) if body else None


def _number(value: object) -> object:
    # Money leaves the service as a JSON number, as in the API's answers.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot announce a {type(value).__name__}")
