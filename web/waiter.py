"""Wake waiting requests when their job finishes, from one Redis subscriber connection per web process.

A synchronous request registers its job here before enqueueing it and then sleeps on an event. Registering
subscribes the process's connection to that job's channel (shared.store.completion_channel), unregistering
unsubscribes it, so a process hears only of the jobs its requests wait for. A single listener thread (a greenlet under
gevent) reads the connection and sets the matching events; waiting therefore costs an Event and a
subscription, not a thread or a connection. The job is read on a wake-up and, should its announcement be
lost, every RECHECK_S.
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

from shared.config import Settings
from shared.store import completion_channel
from shared.store import redis_clients

logger = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_DELAY_S = 1.0
READY_TIMEOUT_S = 2.0
# A waiting request reads its job this often even unwoken: an announcement lost on the way (or a listener
# stalled) then costs it at most this long, not its whole timeout.
RECHECK_S = 5.0
# After this long without a message the listener pings Redis, and a ping unanswered as long again means
# the connection is gone: it reconnects.
IDLE_PING_S = 30.0
BODY_READ_TIMEOUT_S = 2.0


class Done(threading.Event):
    """Set when a job finishes (or when its announcement may have been lost)."""

    def __init__(self) -> None:
        super().__init__()
        # True once the job's own announcement set it, not a reconnect.
        self.announced = False
        # True once its waiter took (or looked for) the body the announcement may have left.
        self.body_taken = False


class CompletionWaiter:
    """Completion events for the jobs this process waits on."""

    recheck_s = RECHECK_S

    def __init__(self, redis_url: str, *, max_connections: int | None = None) -> None:
        self._redis_url = redis_url
        self._events: dict[str, set[Done]] = defaultdict(set)
        # Guards the events and every command sent on the subscriber connection (one writer at a time).
        self._lock = threading.Lock()
        self._subscriber: redis.Connection | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._bodies = redis_clients.connect(
            redis_url, socket_timeout=BODY_READ_TIMEOUT_S, max_connections=max_connections
        )

    def register(self, job_id: str) -> Done:
        """Return an event that is set when `job_id` finishes (or when announcements may have been lost)."""
        self._ensure_listening()
        event = Done()
        with self._lock:
            first = job_id not in self._events
            self._events[job_id].add(event)
            if first:
                self._send("SUBSCRIBE", completion_channel.channel(job_id))
        return event

    def unregister(self, job_id: str, event: Done) -> None:
        """Stop waiting on `event`; remove the body its announcement left if its waiter did not take it."""
        with self._lock:
            waiting = self._events.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[job_id]
                    self._send("UNSUBSCRIBE", completion_channel.channel(job_id))
        if event.announced and not event.body_taken:
            try:
                completion_channel.discard_body(self._bodies, job_id)
            except redis.RedisError:
                logger.warning("could not remove the announced body job_id=%s; it expires", job_id)

    def take_body(self, job_id: str, event: Done) -> dict[str, Any] | None:
        """Return the finished body the job's announcement left for its waiters, if it woke `event` and left one."""
        if not event.announced or event.body_taken:
            return None
        event.body_taken = True
        try:
            return completion_channel.take_body(self._bodies, job_id)
        except redis.RedisError:
            logger.warning("could not read the announced body job_id=%s", job_id)
            return None

    def _send(self, *command: str) -> None:
        """Send a command on the subscriber connection; the caller holds the lock."""
        if self._subscriber is None:
            return  # the listener subscribes every waited-for job once it is connected
        try:
            self._subscriber.send_command(*command)
        except redis.RedisError:
            # Sending closed the connection, which ends the listener's read: it reconnects and subscribes again.
            self._subscriber = None
            logger.warning("completion subscriber lost Redis on %s", command[0])

    def _ensure_listening(self) -> None:
        # Started on first use, so it runs in the serving process (after gunicorn forks), not the master.
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="completion-listener", daemon=True)
                self._thread.start()
        self._ready.wait(READY_TIMEOUT_S)

    def _listen(self) -> None:
        pool = redis_clients.subscriber_pool(
            self._redis_url, socket_timeout=IDLE_PING_S, socket_connect_timeout=READY_TIMEOUT_S
        )
        while True:
            subscriber = pool.make_connection()
            try:
                self._subscribe_all(subscriber)
                # Announcements sent while we were not subscribed are lost: let every waiter recheck.
                self._wake_all()
                self._read(subscriber)
            except redis.RedisError:
                logger.warning("completion listener lost Redis; reconnecting", exc_info=True)
            with self._lock:
                self._ready.clear()
                self._subscriber = None
            subscriber.disconnect()
            self._wake_all()
            time.sleep(RECONNECT_DELAY_S)

    def _read(self, subscriber: redis.Connection) -> None:
        """Wake the waiters of each announced job until the connection fails."""
        pinged = False
        while True:
            try:
                reply = subscriber.read_response(disconnect_on_error=False)
            except redis.TimeoutError:
                if pinged:
                    raise
                with self._lock:
                    self._send("PING")
                pinged = True
                continue
            pinged = False
            # Subscription confirmations and pongs carry no news.
            if reply[0] == b"message":
                self._wake(completion_channel.job_id_of(reply[1]))

    def _subscribe_all(self, subscriber: redis.Connection) -> None:
        subscriber.connect()
        with self._lock:
            if self._events:
                subscriber.send_command("SUBSCRIBE", *(completion_channel.channel(job_id) for job_id in self._events))
            self._subscriber = subscriber
            self._ready.set()

    def _wake(self, job_id: str) -> None:
        with self._lock:
            events = list(self._events.get(job_id, ()))
        for event in events:
            event.announced = True
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
    app.extensions["waiter"] = CompletionWaiter(settings.redis_url, max_connections=settings.redis_max_connections)


def get_waiter() -> CompletionWaiter:
    """Return the current app's waiter."""
    return current_app.extensions["waiter"]
