"""Worker liveness: each worker refreshes a short-lived Redis key that /api/health counts."""

from __future__ import annotations

import contextlib
import logging
import threading

import redis
from celery.signals import worker_ready
from celery.signals import worker_shutdown

from shared.config import get_settings
from shared.store.heartbeats import WORKER_KEY_PREFIX

logger = logging.getLogger(__name__)

_stop = threading.Event()


def _beat(client: redis.Redis, key: str, interval_s: int) -> None:
    while not _stop.is_set():
        try:
            client.set(key, "1", ex=interval_s * 3)
        except redis.RedisError:
            logger.warning("heartbeat could not reach Redis")
        _stop.wait(interval_s)
    with contextlib.suppress(redis.RedisError):
        client.delete(key)


@worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    settings = get_settings()
    hostname = getattr(sender, "hostname", "worker")
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    _stop.clear()
    thread = threading.Thread(
        target=_beat,
        args=(client, WORKER_KEY_PREFIX + hostname, settings.worker_heartbeat_s),
        name="heartbeat",
        daemon=True,
    )
    thread.start()


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    _stop.set()
