"""Per-process dependencies of the tasks, built on first use after the worker process starts."""

from __future__ import annotations

import importlib
import select
import threading
import types

from celery import current_app

from shared.config import get_settings
from shared.jobs import handback
from shared.jobs import runs
from shared.ledger import alerts
from shared.ledger import token_rate
from shared.routing.catalog import load_catalog
from shared.store import completion_channel
from shared.store import redis_clients
from shared.store import stream_relay
from shared.store.session import make_engine
from shared.store.session import make_sessionmaker
from shared.upstream import circuit_breaker
from shared.upstream.admission import Admission
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.deployments import Balancer
from shared.upstream.llm_client import OpenAIChatClient
from worker.celery_app import ALERT_DELIVERY_TASK
from worker.celery_app import CALLBACK_DELIVERY_TASK
from worker.shutdown import current_runner

_lock = threading.Lock()
_deps: runs.RunDeps | None = None
_token_windows: token_rate.TokenWindows | None = None


def get_deps() -> runs.RunDeps:
    """Return this process's job dependencies: one engine, one catalog, reused HTTP clients per upstream."""
    global _deps
    with _lock:
        if _deps is None:
            _native_readability_check()
            settings = get_settings()
            publisher = redis_clients.connect(
                settings.redis_url, socket_timeout=5, max_connections=settings.redis_max_connections
            )
            fast_failing_redis = redis_clients.fast_failing(
                settings.redis_url, max_connections=settings.redis_max_connections
            )
            _deps = runs.RunDeps(
                sessions=make_sessionmaker(make_engine(settings)),
                catalog=load_catalog(settings.model_catalog_path),
                settings=settings,
                client=OpenAIChatClient(settings),
                on_finished=lambda job_id: completion_channel.publish_job_done(publisher, job_id),
                on_answered=lambda job_id, body: completion_channel.publish_job_done(publisher, job_id, body),
                relay=lambda job_id, entry: stream_relay.append(publisher, job_id, entry),
                on_alert=_announce_alert,
                on_callback=_send_callback,
                breaker=CircuitBreaker(fast_failing_redis, circuit_breaker.BreakerPolicy.from_settings(settings)),
                response_cache=fast_failing_redis,
                admission=Admission(fast_failing_redis, burst_s=settings.admission_burst_s),
                balancer=Balancer(fast_failing_redis),
                held=handback.HeldClaims(runner=current_runner),
            )
        return _deps


# The HTTP client stacks the openai SDK may run on, newest first (openai 3.x: httpcore2); each checks a pooled
# connection in `<module>._utils`. Only the first one installed is set up: importing the other costs start-up time.
_HTTP_CORES = ("httpcore2", "httpcore")


def _native_readability_check() -> None:
    """Under gevent, let the HTTP client check its pooled connections with the operating system's poll().

    Before it reuses a pooled connection, httpcore polls the socket with a zero timeout. gevent's patched
    poll() starts and stops event-loop watchers for that, which cost a worker more CPU per job than the rest
    of the upstream call's bookkeeping. A zero-timeout poll never blocks, so the original is safe under gevent.
    """
    try:
        from gevent import monkey
    except ImportError:
        return
    if not monkey.is_module_patched("select"):
        return
    native = types.SimpleNamespace(poll=monkey.get_original("select", "poll"), POLLIN=select.POLLIN)
    for name in _HTTP_CORES:
        try:
            utils = importlib.import_module(f"{name}._utils")
        except ImportError:
            continue
        if hasattr(utils, "is_socket_readable"):
            utils.select = native
        return


# The tasks are sent by their stable names: worker.tasks imports this module, so this one cannot import it.
def _announce_alert(alert: alerts.Announcement) -> None:
    alerts.log(alert)
    if get_settings().alert_webhook_url is not None:
        current_app.send_task(ALERT_DELIVERY_TASK, args=[alert.as_payload()])


def _send_callback(resource: str, resource_id: str) -> None:
    current_app.send_task(CALLBACK_DELIVERY_TASK, args=[resource, resource_id])


def get_token_windows(redis_url: str) -> token_rate.TokenWindows:
    """Return this process's view of the keys' tokens-per-minute windows, which jobs correct when they finish."""
    global _token_windows
    with _lock:
        if _token_windows is None:
            _token_windows = token_rate.TokenWindows(redis_clients.fast_failing(redis_url))
        return _token_windows


def held_claims() -> handback.HeldClaims | None:
    """Return the claims this process's runs hold, or None if it has run no job yet."""
    with _lock:
        return None if _deps is None else _deps.held


def reset() -> None:
    """Forget the dependencies (after a fork, the child must build its own connections)."""
    global _deps, _token_windows
    with _lock:
        _deps = None
        _token_windows = None
