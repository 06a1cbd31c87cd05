"""A worker's hand-back at shutdown: only jobs it still holds are released, stopped and sent to their queue."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from shared.jobs import handback
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from tests.support.fakes import FakeLLMClient
from tests.support.prompts import EASY
from worker import shutdown


@pytest.fixture
def deps(sessions, catalog, settings) -> runs.RunDeps:
    return runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=FakeLLMClient(),
                        sleep=lambda _: None, held=handback.HeldClaims(runner=lambda: "runner"))  # fmt: skip


def _claimed(deps: runs.RunDeps, *, stream: bool = False) -> runs.Claim:
    with deps.sessions.begin() as session:
        job_id = lifecycle.create(session, request=lifecycle.JobRequest(prompt=EASY, stream=stream),
                                  catalog=deps.catalog, settings=deps.settings).id  # fmt: skip
    claim = runs._claim(job_id, deps=deps)
    assert isinstance(claim, runs.Claim)
    return claim


def test_jobs_still_held_are_released_stopped_and_requeued(deps: runs.RunDeps) -> None:
    claim = _claimed(deps)
    deps.held.add(job_id=claim.job_id, run_count=claim.run_count, batch=True, stream=False)
    sent: list[tuple[str, bool]] = []
    stopped: list[object] = []
    handed = shutdown.hand_back(deps.held, deps=deps, enqueue=lambda *job: sent.append(job), stop=stopped.append)
    assert (handed, sent, stopped) == ([claim.job_id], [(claim.job_id, True)], ["runner"])
    with deps.sessions() as session:
        assert session.get(RequestLog, claim.job_id).status is JobStatus.QUEUED


def test_a_job_whose_claim_moved_on_is_left_alone(deps: runs.RunDeps) -> None:
    claim = _claimed(deps)
    deps.held.add(job_id=claim.job_id, run_count=claim.run_count - 1, batch=False, stream=False)
    sent: list[tuple[str, bool]] = []
    stopped: list[object] = []
    assert shutdown.hand_back(deps.held, deps=deps, enqueue=lambda *job: sent.append(job), stop=stopped.append) == []
    assert (sent, stopped) == ([], [])
    with deps.sessions() as session:
        assert session.get(RequestLog, claim.job_id).status is JobStatus.RUNNING


def test_a_streamed_jobs_reader_is_told_its_run_was_handed_back(deps: runs.RunDeps) -> None:
    told: list[tuple[str, dict[str, str]]] = []
    deps = dataclasses.replace(deps, relay=lambda job_id, entry: told.append((job_id, entry)) or False)
    claim = _claimed(deps, stream=True)
    deps.held.add(job_id=claim.job_id, run_count=claim.run_count, batch=False, stream=True)
    shutdown.hand_back(deps.held, deps=deps, enqueue=lambda *job: None, stop=lambda runner: None)
    assert told == [(claim.job_id, shutdown.HANDED_BACK_ENTRY)]


def test_the_hand_back_runs_once_its_grace_has_passed() -> None:
    acted = threading.Event()
    shutdown.later(0.05, acted.set)
    assert acted.wait(timeout=5)


def test_stopping_to_consume_cancels_the_task_consumer() -> None:
    cancelled: list[bool] = []
    consumer = type(
        "Consumer", (), {"task_consumer": type("TaskConsumer", (), {"cancel": lambda self: cancelled.append(True)})()}
    )()
    shutdown.stop_consuming(consumer)
    shutdown.stop_consuming(object())
    assert cancelled == [True]


def test_outside_gevent_the_runner_is_the_thread() -> None:
    assert shutdown.current_runner() is threading.current_thread()
