"""Completion notifications: a worker announces a finished job; the requests waiting for it wake.

Each job has its own channel, `model_router:job:<id>`, and its announcement carries the id alone: a web
process subscribes to the channels of the jobs its requests wait for, and hears of no other job. No prompt
or answer ever crosses a channel, where any subscriber (a pattern subscription included) could read it.

An announcer that has the finished job's body at hand leaves it, when someone is listening, under a key
named after the job for `BODY_TTL_MS`, so that a woken request can answer without reading the job back
from the database. Publishing and leaving the body are one Lua script: a request woken by the announcement
finds the body there, and a job nobody waits for (an async one) leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import Any

import redis

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "model_router:job:"
# Long enough for a woken request to take the body (it does so at once), short enough that one it never
# took (its request ended at that moment) goes soon.
BODY_TTL_MS = 60_000

# KEYS: the job's body key. ARGV: its channel, the job id, the body, its time to live in milliseconds.
# Only a subscription to the job's own channel counts as waiting for it, not a pattern that matches it.
_ANNOUNCE = """
if redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2] > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
"""


def channel(job_id: str) -> str:
    """Return the channel announcing `job_id`'s end."""
    return f"{CHANNEL_PREFIX}{job_id}"


def job_id_of(channel_name: bytes) -> str:
    """Return the id of the job a channel announces."""
    return channel_name.decode().removeprefix(CHANNEL_PREFIX)


def publish_job_done(client: redis.Redis, job_id: str, body: dict[str, Any] | None = None) -> None:
    """Announce that `job_id` reached a terminal state; a lost message only delays waiters to their recheck."""
    try:
        if body is None:
            client.publish(channel(job_id), job_id)
        else:
            announce = client.register_script(_ANNOUNCE)
            announce(keys=[_body_key(job_id)], args=[channel(job_id), job_id, _encoded(body), BODY_TTL_MS])
    except redis.RedisError:
        logger.warning("could not announce job completion job_id=%s", job_id, exc_info=True)


def take_body(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """Return (and remove) the finished body the job's announcement left, if it left one."""
    body = client.getdel(_body_key(job_id))
    return None if body is None else json.loads(body)


def discard_body(client: redis.Redis, job_id: str) -> None:
    """Remove the finished body the job's announcement left, for a waiter that answers without it."""
    client.unlink(_body_key(job_id))


def _body_key(job_id: str) -> str:
    return f"{CHANNEL_PREFIX}{job_id}:body"


def _encoded(body: dict[str, Any]) -> str:
    return json.dumps(body, default=_number)


def _number(value: object) -> object:
    # Money leaves the service as a JSON number, as in the API's answers.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"cannot announce a {type(value).__name__}")
