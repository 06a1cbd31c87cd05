"""A job's states and the moves between them, written once.

A job is created queued (accepted, or answered from the cache and created succeeded); after that it moves only
by the transitions below. Each is a conditional UPDATE (or, to withdraw, a DELETE) whose WHERE clause comes
from `Transition.allows`, so that every writer agrees on when a move is allowed: a worker that lost its
claim, a reaper that looks at a job a worker just finished, a cancel racing a claim all change nothing.

    queued  --claim-->   running  --finish-->  succeeded | failed
    queued  --cancel-->  failed                running --release--> queued   (waits for admission)
    queued  --withdraw-> (gone)                running --claim-->   running  (its lease lapsed)
    queued | running (stale) --reap--> failed; --resend--> unchanged, sent to its queue again
    running (its worker gone) --abandon--> running, its lease ended: stale, so reaped or resent as above
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy import and_
from sqlalchemy import or_
from sqlalchemy import true

from shared.store.models import JobStatus
from shared.store.models import RequestLog

_J = RequestLog.__table__.c

QUEUED = JobStatus.QUEUED
RUNNING = JobStatus.RUNNING
SUCCEEDED = JobStatus.SUCCEEDED
FAILED = JobStatus.FAILED
# The states a job has not finished in (a batch with any is not complete).
PENDING = tuple(status for status in JobStatus if not status.is_terminal)

# A guard: what must hold of a job in one state for a transition to move it, given the transition's inputs.
Guard = Callable[..., ColumnElement[bool]]


def lapsed(*, now: Any, **_: Any) -> ColumnElement[bool]:
    """A running job whose lease ran out: its worker stopped answering."""
    return _J.lease_expires_at < now


def abandoned(*, worker: Any, run_count: Any, claimed_before: Any, now: Any) -> ColumnElement[bool]:
    """A running job still under lease, claimed before `claimed_before` by the run with `run_count` on `worker`.

    The reaper asks it of a job whose worker's heartbeat key is gone: the run count and the worker make sure
    that the lease it ends is the one that worker's run took, not a later run's.
    """
    return and_(
        _J.worker == worker, _J.run_count == run_count, _J.started_at < claimed_before, _J.lease_expires_at >= now
    )


def unsent(*, now: datetime, lease: timedelta) -> ColumnElement[bool]:
    """A queued job not picked up within a lease of being sent: its message may be lost."""
    return or_(_J.enqueued_at.is_(None), _J.enqueued_at < now - lease)


def _always(**_: Any) -> ColumnElement[bool]:
    return true()


def _claimed_with(*, run_count: Any) -> ColumnElement[bool]:
    return _J.run_count == run_count


@dataclass(frozen=True)
class Transition:
    """A move: from each state in `sources` (while its guard holds) to one of `targets`; `targets` empty: the
    row is removed; None: the job stays in the state it is in (the move changes other columns)."""

    name: str
    sources: Mapping[JobStatus, Guard]
    targets: tuple[JobStatus, ...] | None

    def __post_init__(self) -> None:
        # A finished job is final: its result, its settlement and its batch's count depend on it.
        assert not any(status.is_terminal for status in self.sources), f"{self.name} leaves a terminal state"

    def allows(self, **inputs: Any) -> ColumnElement[bool]:
        """Return the WHERE clause under which this transition may move a job (`inputs`: its guards' values)."""
        return or_(*(and_(_J.status == status, guard(**inputs)) for status, guard in self.sources.items()))

    def edges(self) -> set[tuple[JobStatus, JobStatus | None]]:
        """Return every (from, to) move this transition makes; to None when it removes the job."""
        if self.targets is None:
            return {(source, source) for source in self.sources}
        return {(source, target) for source in self.sources for target in self.targets or (None,)}


# A worker takes a queued job, or one whose worker's lease lapsed (inputs: now).
CLAIM = Transition("claim", {QUEUED: _always, RUNNING: lapsed}, (RUNNING,))
# The worker that holds the claim records the outcome (inputs: run_count).
FINISH = Transition("finish", {RUNNING: _claimed_with}, (SUCCEEDED, FAILED))
# The worker that holds the claim gives the job back to wait for admission (inputs: run_count).
RELEASE = Transition("release", {RUNNING: _claimed_with}, (QUEUED,))
# A job that has not started is cancelled, failed at no cost.
CANCEL = Transition("cancel", {QUEUED: _always}, (FAILED,))
# Accepted work that could not be enqueued is forgotten.
WITHDRAW = Transition("withdraw", {QUEUED: _always}, ())
# The one stale-job condition (inputs: now, lease): a running job whose lease lapsed, a queued one whose message
# may be lost. The reaper fails such a job, or sends it again (it stays in its state, sent anew).
STALE: Mapping[JobStatus, Guard] = {RUNNING: lapsed, QUEUED: unsent}
REAP = Transition("reap", STALE, (FAILED,))
RESEND = Transition("resend", STALE, None)
# A running job whose worker died ends its lease at once, so that it is stale without waiting the lease out
# (inputs: worker, run_count, claimed_before, now). The run that held it stays fenced out by its run count.
ABANDON = Transition("abandon", {RUNNING: abandoned}, None)

TRANSITIONS = (CLAIM, FINISH, RELEASE, CANCEL, WITHDRAW, REAP, RESEND, ABANDON)


def held(*, run_count: Any) -> ColumnElement[bool]:
    """The run that claimed the job with `run_count` still holds it: it alone may still finish it."""
    return FINISH.allows(run_count=run_count)
