"""One thread per process that runs actions at their deadlines: what ends an upstream call at its time limit.

A thread per call (threading.Timer) costs about 200 µs to start; arming an alarm here costs a heap push. An
alarm cancelled before its time stays in the heap until then and is skipped. Under gevent the thread is a
greenlet, like every other; a forked child starts its own on its first alarm.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

logger = logging.getLogger(__name__)


@dataclass(order=True)
class Alarm:
    """An action due at `at` (time.monotonic()); `fired` once it ran."""

    at: float
    seq: int
    action: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    fired: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True
        self.action = _nothing  # what the action holds (a connection's socket) need not wait for its time


def _nothing() -> None:
    pass


class Watchdog:
    """Runs each armed alarm's action once its time comes, unless it was cancelled first."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh, with no alarm and no thread (in a forked child)."""
        self._condition = threading.Condition()
        self._heap: list[Alarm] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], None]) -> Alarm:
        """Run `action` in `seconds` (from the watchdog's thread) unless the returned alarm is cancelled first."""
        alarm = Alarm(time.monotonic() + max(seconds, 0.0), next(self._seq), action)
        with self._condition:
            heapq.heappush(self._heap, alarm)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="upstream-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0] is alarm:
                self._condition.notify()
        return alarm

    def _run(self) -> None:
        with self._condition:
            while True:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._condition.wait()
                    continue
                wait = self._heap[0].at - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                alarm = heapq.heappop(self._heap)
                alarm.fired = True
                self._condition.release()
                try:
                    alarm.action()
                except Exception:
                    logger.exception("a watchdog action failed")
                finally:
                    self._condition.acquire()


WATCHDOG = Watchdog()
# A child forked while the parent's watchdog held its lock would never get it: the child starts afresh.
os.register_at_fork(after_in_child=WATCHDOG.reset)
