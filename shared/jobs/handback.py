"""Handing jobs back: a worker that is shutting down gives the claims it cannot finish to the next worker at once.

A claim lasts a lease (JOB_LEASE_S), so a job whose worker stops holding it is otherwise run again only when
the reaper finds its lease lapsed. A worker told to stop (SIGTERM) keeps its runs' claims in `HeldClaims`, lets
them finish for as long as its shutdown grace allows, and then releases each one still held (`release`) and
sends its job to its queue again: the next run claims it at once.

Money stays exact under the lost-calls rules (shared.ledger.lost_calls): a call in flight when the claim is
released stays noted on the job (`in_flight_cost`), and the next run charges it at its bound before it runs.
The release keeps the run count: the run that lost its claim is fenced out (its finish, and its notes of new
calls, are conditional on the run count it claimed with), and the hand-back counts as a run (JOB_MAX_RUNS).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.jobs import states
from shared.store.models import JobStatus
from shared.store.models import RequestLog


@dataclass(frozen=True)
class Held:
    """One claim a run of this process holds: the job, the run count that fences it, and what runs it."""

    job_id: str
    run_count: int
    batch: bool
    stream: bool
    # What runs the job (the worker's greenlet or thread), so that the worker can stop that run alone.
    runner: object


class HeldClaims:
    """The claims this process's runs hold right now; `runner` tells which greenlet or thread adds one."""

    def __init__(self, runner: Callable[[], object] = threading.current_thread) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}

    def add(self, *, job_id: str, run_count: int, batch: bool, stream: bool) -> None:
        held = Held(job_id=job_id, run_count=run_count, batch=batch, stream=stream, runner=self._runner())
        with self._lock:
            self._held[job_id] = held

    def discard(self, job_id: str, run_count: int) -> None:
        with self._lock:
            held = self._held.get(job_id)
            if held is not None and held.run_count == run_count:
                del self._held[job_id]

    def list_(self) -> list[Held]:
        with self._lock:
            return list(self._held.values())


def release(sessions: sessionmaker[Session], *, job_id: str, run_count: int, now: datetime) -> bool:
    """Put the job back in its queue's state, unclaimed, while the run that claimed it with `run_count` still
    holds it; False if it does not (the job finished, or was taken over, meanwhile)."""
    with sessions.begin() as session:
        released = session.execute(
            update(RequestLog)
            .where(RequestLog.id == job_id, states.RELEASE.allows(run_count=run_count))
            .values(status=JobStatus.QUEUED, lease_expires_at=None, started_at=None, enqueued_at=now, updated_at=now)
            .returning(RequestLog.id)
        ).first()
    return released is not None
