"""Which jobs still have a message in the broker, read from kombu's Redis structures.

kombu's Redis transport keeps each queue as Redis lists (one per priority step) and every message delivered
to a consumer but not yet acknowledged in its `unacked` hash, until the message is acknowledged or restored
to its queue. A job whose message is in either is not lost: a worker has it or will get it.

A delivered message whose consumer died goes back to its queue once it has been unacknowledged for the
visibility timeout (kombu's restore sweep, worker.celery_app). One unacknowledged for twice that was not
restored (a sweep that never came, a restore lock left by a killed worker) is counted as gone, so that the
reaper sends it again rather than wait on it forever; should kombu restore it after all, the job's claim makes
the second message harmless.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from celery import Celery
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from shared.jobs.reaper import Messages

RUN_TASK = "jobs.run"


def job_messages(app: Celery, *, queues: Iterable[str], now: float | None = None) -> Messages:
    """Return the ids of the jobs whose `jobs.run` message waits in one of `queues` or is delivered unacked
    (and not overdue for its restore)."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        client = channel.client
        keys = {channel._q_for_pri(queue, step) for queue in queues for step in channel.priority_steps}
        overdue_before = (time.time() if now is None else now) - 2 * channel.visibility_timeout
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.lrange(key, 0, -1)
            pipe.hgetall(channel.unacked_key)
            # Delivery times (seconds since the epoch) of the messages delivered longest ago.
            pipe.zrange(channel.unacked_index_key, "-inf", overdue_before, byscore=True)
            *lists, unacked, overdue = pipe.execute()
        waiting = _job_ids(channel, (loads(bytes_to_str(raw)) for items in lists for raw in items))
        # Each unacked entry is [message, exchange, routing key], under its delivery tag.
        gone = set(overdue)
        delivered = _job_ids(channel, (loads(bytes_to_str(raw))[0] for tag, raw in unacked.items() if tag not in gone))
    return Messages(waiting=frozenset(waiting), delivered=frozenset(delivered))


def _job_ids(channel: object, payloads: Iterable[dict[str, object]]) -> set[str]:
    ids = set()
    for payload in payloads:
        headers = payload.get("headers") or {}
        if headers.get("task") != RUN_TASK:  # type: ignore[union-attr]
            continue
        args, _kwargs, _embed = channel.Message(payload, channel=channel).decode()  # type: ignore[attr-defined]
        ids.add(args[0])
    return ids
