"""Streamed answers: the worker appends each delta to a Redis stream per job; the web request reads it.

Entries are flat string maps. A "delta" entry carries text (the first also the model and tier); the
last entry is "done" (finish reason and usage) or "error" (code, status and message). A stream expires
STREAM_TTL_S after its last entry, so a reader that comes late (a repeated request) can still replay it.

A reader whose client leaves sets the job's cancel mark; the worker learns of it with the reply to its next
append and stops the upstream call (shared.jobs.runs).
"""

from __future__ import annotations

import logging

import redis

from shared.store import redis_clients

logger = logging.getLogger(__name__)

STREAM_KEY_PREFIX = "model_router:stream:"
CANCEL_KEY_PREFIX = "model_router:stream-cancel:"
STREAM_TTL_S = 300
DELTA, DONE, ERROR = "delta", "done", "error"
# A blocked read's socket waits this much longer than the block, so the server's empty answer always comes
# first: a socket timeout at the block time would turn a quiet stream into a connection error.
SOCKET_TIMEOUT_MARGIN_S = 5.0


def key(job_id: str) -> str:
    """Return the Redis key of the job's stream."""
    return STREAM_KEY_PREFIX + job_id


def cancel_key(job_id: str) -> str:
    """Return the Redis key that marks the job's stream as abandoned by its reader."""
    return CANCEL_KEY_PREFIX + job_id


def append(client: redis.Redis, job_id: str, entry: dict[str, str]) -> bool:
    """Append one entry to the job's stream; return whether its reader asked to cancel the job.

    The cancel mark is read in the same round trip as the append. A lost entry only costs the reader its
    wait, never the job: a Redis failure is logged and reads as "not cancelled".
    """
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xadd(key(job_id), entry)  # type: ignore[arg-type]
        pipe.expire(key(job_id), STREAM_TTL_S)
        pipe.exists(cancel_key(job_id))
        return bool(pipe.execute()[-1])
    except redis.RedisError:
        logger.warning("could not relay a stream entry job_id=%s", job_id, exc_info=True)
        return False


class Reader:
    """Reads job streams with blocking XREADs on a client of its own, whose socket outwaits every block.

    redis-py's default socket timeout (5 s since redis-py 6) would cut any block as long as it; here the
    socket timeout follows the longest block the reader allows, whatever the library's default.
    """

    def __init__(self, redis_url: str, *, max_block_s: float, max_connections: int) -> None:
        self.max_block_ms = max(int(max_block_s * 1000), 1)
        # Each blocked read holds a connection, so the pool needs room for every streaming request.
        self.client = redis_clients.connect(
            redis_url,
            socket_timeout=max_block_s + SOCKET_TIMEOUT_MARGIN_S,
            health_check_interval=30,
            max_connections=max_connections,
        )

    def read(self, job_id: str, *, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Return the entries after id `after`, waiting up to `block_ms` (at most the reader's longest block).

        Returns [] when none came; raises redis.RedisError when Redis cannot be read.
        """
        block = min(max(block_ms, 1), self.max_block_ms)
        answer = self.client.xread({key(job_id): after}, block=block, count=256)
        entries: list[tuple[str, dict[str, str]]] = []
        for _, items in answer or []:
            for entry_id, fields in items:
                entries.append((_text(entry_id), {_text(k): _text(v) for k, v in fields.items()}))
        return entries

    def request_cancel(self, job_id: str) -> bool:
        """Mark the job as abandoned by its reader; return False if Redis could not be told."""
        try:
            self.client.set(cancel_key(job_id), "1", ex=STREAM_TTL_S)
        except redis.RedisError:
            logger.warning("could not mark a stream cancelled job_id=%s", job_id, exc_info=True)
            return False
        return True

    def close(self) -> None:
        self.client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
