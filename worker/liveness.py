"""A liveness file for orchestrators: workers and beat touch it every heartbeat, a probe checks its age.

Kubernetes' exec probe runs `python -m worker.liveness`, which exits 0 while the file was touched within three
heartbeats (WORKER_HEARTBEAT_S) and 1 otherwise. Unlike `celery inspect ping` it needs no broker: a Redis outage
must not get every worker restarted, and the heartbeat that touches the file runs on the worker's own event loop,
so a loop stuck for three heartbeats fails the probe (under the gevent pool the thread is a greenlet).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# The file is stale after this many heartbeats, as the Redis heartbeat key expires after them.
STALE_AFTER_BEATS = 3


def touch(path: Path | None) -> None:
    """Mark the process alive now; a file that cannot be written is logged, never fatal."""
    if path is None:
        return
    try:
        path.touch()
    except OSError:
        logger.warning("liveness file %s cannot be written", path)


class LivenessFile:
    """Touches `path` every `interval_s` from a daemon thread (a greenlet under gevent) until stopped."""

    def __init__(self, path: Path, *, interval_s: float) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stop = threading.Event()

    def start(self) -> None:
        self._stop.clear()
        threading.Thread(target=self._run, name="liveness", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            touch(self._path)
            self._stop.wait(self._interval_s)


def is_fresh(path: Path, *, heartbeat_s: float, now: float | None = None) -> bool:
    """Tell whether `path` was touched within the last STALE_AFTER_BEATS heartbeats."""
    try:
        touched = path.stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - touched <= heartbeat_s * STALE_AFTER_BEATS


def main() -> int:
    """Exit 0 when the liveness file of this process's settings is fresh, 1 when it is stale or unset."""
    from shared.config import get_settings

    settings = get_settings()
    if settings.worker_liveness_file is None:
        print("WORKER_LIVENESS_FILE is not set", file=sys.stderr)
        return 1
    if not is_fresh(settings.worker_liveness_file, heartbeat_s=settings.worker_heartbeat_s):
        print(f"{settings.worker_liveness_file} is stale or missing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
