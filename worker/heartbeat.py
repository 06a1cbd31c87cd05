"""Worker liveness: each worker refreshes a short-lived Redis key that /api/health counts.

With WORKER_LIVENESS_FILE set, workers and beat also touch that file every WORKER_HEARTBEAT_S from a loop of its
own, which never waits on Redis: Kubernetes' liveness probe reads the file (worker.liveness).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import redis
from celery.signals import beat_init
from celery.signals import worker_ready
from celery.signals import worker_shutdown

from shared.config import Settings
from shared.config import get_settings
from shared.store.heartbeats import WORKER_KEY_PREFIX
from worker import liveness

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
    _start_liveness(settings)


@beat_init.connect
def _start_beat_liveness(**_: object) -> None:
    _start_liveness(get_settings())


def _start_liveness(settings: Settings) -> None:
    if settings.worker_liveness_file is None:
        return
    args = (settings.worker_liveness_file, settings.worker_heartbeat_s)
    threading.Thread(target=_touch_until_stopped, args=args, name="liveness", daemon=True).start()


def _touch_until_stopped(path: Path, interval_s: int) -> None:
    while not _stop.is_set():
        liveness.touch(path)
        _stop.wait(interval_s)


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    _stop.set()
