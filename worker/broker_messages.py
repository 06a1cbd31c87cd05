"""Which jobs still have a message in the broker, read from kombu's Redis structures.

kombu's Redis transport keeps each queue as Redis lists (one per priority step) and every message delivered
to a consumer but not yet acknowledged in its `unacked` hash, until the message is acknowledged or restored
to its queue. A job whose message is in either is not lost: a worker has it or will get it.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from shared.reaper import Messages

RUN_TASK = "jobs.run"


def job_messages(app: Celery, *, queues: Iterable[str]) -> Messages:
    """Return the ids of the jobs whose `jobs.run` message waits in one of `queues` or is delivered unacked."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        client = channel.client
        keys = {channel._q_for_pri(queue, step) for queue in queues for step in channel.priority_steps}
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.lrange(key, 0, -1)
            pipe.hvals(channel.unacked_key)
            *lists, unacked = pipe.execute()
        waiting = _job_ids(channel, (loads(bytes_to_str(raw)) for items in lists for raw in items))
        # Each unacked entry is [message, exchange, routing key].
        delivered = _job_ids(channel, (loads(bytes_to_str(raw))[0] for raw in unacked))
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
