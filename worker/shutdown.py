"""A worker's shutdown within its grace period: finish the jobs it can, hand the others back at once.

On SIGTERM Celery stops taking messages (here at once: `stop_consuming`) and waits for the runs in progress (a
warm shutdown). The orchestrator
does not wait for ever: Kubernetes kills the pod `terminationGracePeriodSeconds` after SIGTERM, and a job its
run still held would wait a whole lease (JOB_LEASE_S) for the reaper. So WORKER_SHUTDOWN_GRACE_S after SIGTERM
(set below the pod's grace), every job still held is handed back (shared.jobs.handback): its claim released,
its run stopped, and its job sent to its queue again, where another worker takes it at once.

Under the gevent pool (production's) a run is stopped by killing its greenlet: Celery then acknowledges its
message, so the job's only message is the one sent here. Under the threads pool a run cannot be stopped: it
goes on until its upstream call returns, fenced out of the job (it can neither finish it nor note new calls),
and the worker exits after it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from shared.jobs import handback
from shared.jobs import runs
from shared.store import stream_relay
from shared.store.types import utcnow

logger = logging.getLogger(__name__)

# What a streamed job's reader is told when its run is handed back: the job goes on, its stream does not.
HANDED_BACK_ENTRY = {
    "type": stream_relay.ERROR,
    "code": "unavailable",
    "message": "the worker running the job shut down; the job runs again, read it at /api/jobs/<id>",
}


def current_runner() -> object:
    """Return what runs the calling code: its greenlet under gevent's patched threading, else its thread."""
    if not _gevent_patched():
        return threading.current_thread()
    import gevent

    return gevent.getcurrent()


def stop_runner(runner: object) -> None:
    """Stop a run's greenlet (it dies with GreenletExit); a thread cannot be stopped and is left to end."""
    try:
        import gevent
    except ImportError:
        return
    # Celery's gevent pool runs each task in a gevent.Greenlet of its own.
    if isinstance(runner, gevent.Greenlet) and runner is not gevent.getcurrent():
        gevent.kill(runner)


def hand_back(
    held: handback.HeldClaims,
    *,
    deps: runs.RunDeps,
    enqueue: Callable[[str, bool], None],
    stop: Callable[[object], None] = stop_runner,
) -> list[str]:
    """Hand back every job still held: release its claim, stop its run, send it to its queue; return the ids.

    A job whose claim is already gone (it finished meanwhile) is left to its run.
    """
    handed: list[str] = []
    for claim in held.list_():
        try:
            released = handback.release(deps.sessions, job_id=claim.job_id, run_count=claim.run_count, now=utcnow())
        except Exception:
            # The reaper takes the job over once its lease lapses.
            logger.exception("could not hand back job_id=%s", claim.job_id)
            continue
        if not released:
            continue
        stop(claim.runner)
        if claim.stream and deps.relay is not None:
            try:
                deps.relay(claim.job_id, dict(HANDED_BACK_ENTRY))
            except Exception:
                logger.warning("could not tell the stream of job_id=%s that it was handed back", claim.job_id)
        enqueue(claim.job_id, claim.batch)
        handed.append(claim.job_id)
    if handed:
        logger.warning("handed back %d jobs at shutdown: %s", len(handed), ", ".join(handed))
    return handed


def stop_consuming(consumer: object) -> None:
    """Cancel the worker's task consumer, as Celery's own cold shutdown does.

    A warm shutdown reads the broker once or twice more (up to 2 s each) before it stops consuming: a job
    handed back meanwhile would come back to this very worker. A message read after the cancel is requeued.
    """
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        task_consumer.cancel()


def later(delay_s: float, action: Callable[[], object]) -> None:
    """Run `action` `delay_s` from now, in a greenlet under gevent (else a daemon thread); the process may end first.

    Called from a signal handler, which under gevent may run in the event loop itself: it only schedules.
    """

    def act() -> None:
        try:
            action()
        except Exception:
            logger.exception("a step of the shutdown failed step=%s", getattr(action, "__name__", action))

    if _gevent_patched():
        import gevent

        gevent.spawn_later(delay_s, act)
        return
    timer = threading.Timer(delay_s, act)
    timer.daemon = True
    timer.start()


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")
