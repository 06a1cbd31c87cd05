"""Per-process dependencies of the tasks, built on first use after the worker process starts."""

from __future__ import annotations

import threading

import redis

from shared import alerts
from shared import circuit
from shared import notify
from shared import runs
from shared import streams
from shared.catalog import load_catalog
from shared.circuit import CircuitBreaker
from shared.config import get_settings
from shared.db.session import make_engine
from shared.db.session import make_sessionmaker
from shared.llm_client import OpenAIChatClient

_lock = threading.Lock()
_deps: runs.RunDeps | None = None


def get_deps() -> runs.RunDeps:
    """Return this process's job dependencies: one engine, one catalog, one HTTP client per upstream."""
    global _deps
    with _lock:
        if _deps is None:
            settings = get_settings()
            publisher = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
            _deps = runs.RunDeps(
                sessions=make_sessionmaker(make_engine(settings)),
                catalog=load_catalog(settings.model_catalog_path),
                settings=settings,
                client=OpenAIChatClient(settings),
                on_finished=lambda job_id: notify.publish_job_done(publisher, job_id),
                on_answered=lambda job_id, body: notify.publish_job_done(publisher, job_id, body),
                relay=lambda job_id, entry: streams.append(publisher, job_id, entry),
                on_alert=_announce_alert,
                on_callback=_send_callback,
                breaker=CircuitBreaker(
                    circuit.fast_failing_client(settings.redis_url), circuit.BreakerPolicy.from_settings(settings)
                ),
                response_cache=circuit.fast_failing_client(settings.redis_url),
            )
        return _deps


def _announce_alert(alert: alerts.Alert) -> None:
    alerts.log(alert)
    if get_settings().alert_webhook_url is not None:
        # Imported here: the tasks module imports this one.
        from worker.tasks import deliver_alert

        deliver_alert.apply_async(args=[alert.as_payload()])


def _send_callback(resource: str, resource_id: str) -> None:
    from worker.tasks import deliver_callback

    deliver_callback.apply_async(args=[resource, resource_id])


def reset() -> None:
    """Forget the dependencies (after a fork, the child must build its own connections)."""
    global _deps
    with _lock:
        _deps = None
