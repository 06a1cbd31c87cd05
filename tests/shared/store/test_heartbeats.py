"""A worker's heartbeat: counted while it beats, no longer once it stops."""

from __future__ import annotations

import redis

from shared.store.heartbeats import MISSED_BEATS
from shared.store.heartbeats import Heartbeat
from shared.store.heartbeats import count_alive_workers
from tests.conftest import UNIT_REDIS_URL


def test_a_beating_worker_is_counted_until_it_stops() -> None:
    client = redis.Redis.from_url(UNIT_REDIS_URL)
    client.flushdb()
    heartbeat = Heartbeat(client, worker="celery@probe", interval_s=7)

    heartbeat.beat()

    assert count_alive_workers(client) == 1
    # The key outlives a few missed beats, not forever: a worker that died stops being counted.
    assert 0 < client.ttl("model_router:workers:celery@probe") <= 7 * MISSED_BEATS
    heartbeat.stop()
    heartbeat._run()  # stopped: deletes the key and returns
    assert count_alive_workers(client) == 0


def test_a_heartbeat_without_redis_is_only_logged() -> None:
    Heartbeat.from_url("redis://127.0.0.1:1/0", worker="celery@probe", interval_s=1).beat()
