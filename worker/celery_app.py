"""The Celery app factory, configured from the same Settings as the web tier."""

from __future__ import annotations

import sys
import time

from celery import Celery
from celery import signals

from shared.config import Settings
from shared.config import exit_on_config_error
from shared.config import get_settings
from shared.errors import ConfigError
from shared.observability import logs
from shared.store.heartbeats import Heartbeat
from worker import metrics_server
from worker.liveness import LivenessFile
from worker.redis_transport import transport_for

PROMPTS_QUEUE = "prompts"
BATCH_QUEUE = "batch"
# Task names are stable, whatever the modules are called: queued messages name their task.
ALERT_DELIVERY_TASK = "alerts.deliver"
CALLBACK_DELIVERY_TASK = "webhooks.deliver"


def create_celery(settings: Settings) -> Celery:
    """Build a Celery app for `settings`; tasks are found in worker.tasks."""
    app = Celery("model_router", include=["worker.tasks"])
    # A run must end before its lease lapses (or another run may take the job over), so the time limits sit
    # under the lease (shared.config.TimeLimits) and Redis's visibility timeout above it (Celery's optimizing
    # guide).
    limits = settings.time_limits
    app.conf.update(
        broker_url=settings.redis_url,
        broker_transport=transport_for(settings.redis_url),
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.job_lease_s * 2,
            # Messages a dead worker had taken (kombu's `unacked` hash) go back to their queue once the
            # visibility timeout passes; the reaper leaves them to this (shared.jobs.reaper). kombu looks for them
            # every interval x throttle seconds (100 s by default): here every tenth of a lease.
            "unacked_restore_interval": max(1, settings.job_lease_s // 10),
            "unacked_restore_throttle": 1,
            "max_connections": settings.redis_max_connections,
        },
        # Job state lives in the database; waiting requests learn of completion through Redis pub/sub.
        task_ignore_result=True,
        # No result backend is configured: the disabled one is stateless, so one instance serves every task.
        # Otherwise Celery keeps one per thread, which under the gevent pool means building one per task.
        result_backend_thread_safe=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=PROMPTS_QUEUE,
        # Jobs are idempotent (claimed with a lease, finished under that claim), so redelivery is safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Room beyond the pool's size: under gevent, Celery's loop sends late acks only between its waits for
        # the broker, so a worker whose prefetch is full of finished-but-unacked jobs stalls for up to 2 s
        # before it takes the next one (the chaos suite ran 2.5x slower at 1). Unstarted prefetched jobs are
        # redelivered if the worker dies, and their claims keep them from running twice.
        worker_prefetch_multiplier=4,
        task_soft_time_limit=limits.soft_s,
        task_time_limit=limits.hard_s,
        # Fail a publish fast when Redis is down: the web tier answers 503 and releases the reservation.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        beat_schedule={
            "reap-stuck-jobs": {"task": "jobs.reap", "schedule": float(settings.reaper_interval_s)},
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@signals.worker_init.connect
def _cooperative_broker_waits(**_: object) -> None:
    """Under gevent, let kombu's broker retries wait for their turn without stopping every job of the worker.

    `celery worker --pool gevent` imports part of kombu before it patches the standard library, so
    kombu.utils.functional keeps the blocking time.sleep: while Redis is down, the consumer's reconnection waits
    (2 s, 4 s, ... up to 30 s) and a publish's retries froze every job of the process, past its deadline and up
    to its hard time limit, after which the job is run (and its calls charged) again.
    """
    try:
        from gevent import monkey
    except ImportError:
        return
    if not monkey.is_module_patched("time"):
        return
    blocking = monkey.get_original("time", "sleep")
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("kombu", "celery") and getattr(module, "sleep", None) is blocking:
            module.sleep = time.sleep


# This process's liveness key, refreshed from the moment it consumes (shared.store.heartbeats), and, with
# WORKER_LIVENESS_FILE set, the file orchestrators' probes read (worker.liveness), touched from a loop of its own
# that never waits on Redis, so that a Redis outage gets no worker restarted.
_heartbeat: Heartbeat | None = None
_liveness: LivenessFile | None = None


@signals.worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    global _heartbeat
    settings = get_settings()
    _heartbeat = Heartbeat.from_url(
        settings.redis_url, worker=getattr(sender, "hostname", "worker"), interval_s=settings.worker_heartbeat_s
    )
    _heartbeat.start()
    _start_liveness(settings)
    # In the process that runs the jobs (gevent and threads pools), once it consumes: worker.metrics_server.
    metrics_server.serve(settings.worker_metrics_port)


@signals.beat_init.connect
def _start_beat_liveness(**_: object) -> None:
    _start_liveness(get_settings())


def _start_liveness(settings: Settings) -> None:
    global _liveness
    if settings.worker_liveness_file is None:
        return
    _liveness = LivenessFile(settings.worker_liveness_file, interval_s=settings.worker_heartbeat_s)
    _liveness.start()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
    if _liveness is not None:
        _liveness.stop()


@signals.setup_logging.connect
def _configure_logging(**_: object) -> None:
    # Connected, this replaces Celery's own logging set-up: worker lines share the web tier's format.
    logs.configure(get_settings(), force=True)


def __getattr__(name: str) -> Celery:
    # `celery -A worker.celery_app worker` looks up `celery_app`; build it on that first look-up rather
    # than at import time, so importing this module never reads settings.
    if name == "celery_app":
        try:
            app = create_celery(get_settings())
        except ConfigError as error:
            exit_on_config_error(error)
        globals()["celery_app"] = app
        return app
    raise AttributeError(name)
