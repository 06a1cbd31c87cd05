"""Wake waiting requests when their job finishes, from one Redis subscription per web process.

A synchronous POST /api/prompt registers its job here before enqueueing it and then sleeps on an event;
a single listener thread (a greenlet under gevent) receives every completion announcement and sets the
matching events. Waiting therefore costs an Event, not a thread or a connection; the job is read on a
wake-up and, should its announcement be lost, every RECHECK_S.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from typing import TypeVar

import redis
from flask import Flask
from flask import current_app

from shared import notify
from shared.config import Settings
from shared.notify import JOB_DONE_CHANNEL

logger = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_DELAY_S = 1.0
READY_TIMEOUT_S = 2.0
# A waiting request reads its job this often even unwoken: an announcement lost on the way (or a listener
# stalled) then costs it at most this long, not its whole timeout.
RECHECK_S = 5.0


class Done(threading.Event):
    """Set when a job finishes; holds its finished body when the announcement carried one."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, Any] | None = None


class CompletionWaiter:
    """Completion events for the jobs this process waits on."""

    recheck_s = RECHECK_S

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._events: dict[str, set[Done]] = defaultdict(set)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, job_id: str) -> Done:
        """Return an event that is set when `job_id` finishes (or when announcements may have been lost)."""
        self._ensure_listening()
        event = Done()
        with self._lock:
            self._events[job_id].add(event)
        return event

    def unregister(self, job_id: str, event: Done) -> None:
        """Stop waiting on `event`."""
        with self._lock:
            waiting = self._events.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[job_id]

    def _ensure_listening(self) -> None:
        # Started on first use, so it runs in the serving process (after gunicorn forks), not the master.
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="completion-listener", daemon=True)
                self._thread.start()
        self._ready.wait(READY_TIMEOUT_S)

    def _listen(self) -> None:
        while True:
            try:
                client = redis.Redis.from_url(self._redis_url, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(JOB_DONE_CHANNEL)
                pubsub.get_message(timeout=READY_TIMEOUT_S)  # the subscribe confirmation
                self._ready.set()
                # Announcements sent while we were not subscribed are lost: let every waiter recheck.
                self._wake_all()
                for message in pubsub.listen():
                    if message["type"] == "message":
                        self._wake(message["data"])
            except redis.RedisError:
                self._ready.clear()
                logger.warning("completion listener lost Redis; reconnecting", exc_info=True)
                self._wake_all()
                time.sleep(RECONNECT_DELAY_S)

    def _wake(self, message: bytes) -> None:
        with self._lock:
            events = list(self._events.get(notify.job_id_of(message), ()))
        # Every web process hears every announcement: only one with a waiter decodes the body.
        body = notify.body_of(message) if events else None
        for event in events:
            event.body = event.body or body
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for waiting in self._events.values() for event in waiting]
        for event in events:
            event.set()


def wait_for(
    done: threading.Event, *, timeout_s: float, look: Callable[[], T | None], recheck_s: float = RECHECK_S
) -> T | None:
    """Sleep on `done` until `look()` finds the job finished or `timeout_s` passes; return what it found.

    A wake-up is the job's announcement or a reconnect that may have lost one, so each is checked; so is
    every `recheck_s` without one, and the deadline itself, for an announcement that never came.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        step = min(remaining, recheck_s)
        woken = step > 0 and done.wait(step)
        done.clear()
        found = look()
        if found is not None or (not woken and step >= remaining):
            return found


def init_app(app: Flask, settings: Settings) -> None:
    """Attach this process's waiter to the app."""
    app.extensions["waiter"] = CompletionWaiter(settings.redis_url)


def get_waiter() -> CompletionWaiter:
    """Return the current app's waiter."""
    return current_app.extensions["waiter"]
