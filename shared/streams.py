"""Streamed answers: the worker appends each delta to a Redis stream per job; the web request reads it.

Entries are flat string maps. A "delta" entry carries text (the first also the model and tier); the
last entry is "done" (finish reason and usage) or "error" (code, status and message). A stream expires
STREAM_TTL_S after its last entry, so a reader that comes late (a repeated request) can still replay it.
"""

from __future__ import annotations

import logging

import redis

logger = logging.getLogger(__name__)

STREAM_KEY_PREFIX = "model_router:stream:"
STREAM_TTL_S = 300
DELTA, DONE, ERROR = "delta", "done", "error"


def key(job_id: str) -> str:
    """Return the Redis key of the job's stream."""
    return STREAM_KEY_PREFIX + job_id


def append(client: redis.Redis, job_id: str, entry: dict[str, str]) -> None:
    """Append one entry to the job's stream; a lost entry only costs the reader its wait, never the job."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key(job_id), entry)  # type: ignore[arg-type]
        pipe.expire(key(job_id), STREAM_TTL_S)
        pipe.execute()
    except redis.RedisError:
        logger.warning("could not relay a stream entry job_id=%s", job_id, exc_info=True)


def read(client: redis.Redis, job_id: str, *, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
    """Return the entries after id `after`, waiting up to `block_ms` for the first; [] when none came."""
    answer = client.xread({key(job_id): after}, block=max(block_ms, 1), count=256)
    entries: list[tuple[str, dict[str, str]]] = []
    for _, items in answer or []:
        for entry_id, fields in items:
            entries.append((_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}))
    return entries


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
