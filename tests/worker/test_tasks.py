"""The `runs.run` Celery task, run in-process (no broker) on a test database and a fake LLM client."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.errors import PermanentLLMError
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.types import utcnow
from tests.support.fakes import FakeLLMClient
from worker import runtime
from worker import tasks

EASY = "What is the capital of France?"
LEASE_LEFT_S = 120


@pytest.fixture
def fake() -> FakeLLMClient:
    return FakeLLMClient()


@pytest.fixture
def finished() -> list[str]:
    return []


@pytest.fixture
def deps(
    sessions: sessionmaker[Session],
    catalog: Catalog,
    settings: Settings,
    fake: FakeLLMClient,
    finished: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[runs.RunDeps]:
    """Install test dependencies where the task looks them up, as a worker process would have built them."""
    deps = runs.RunDeps(
        sessions=sessions,
        catalog=catalog,
        settings=settings,
        client=fake,
        on_finished=finished.append,
        sleep=lambda seconds: None,
    )
    monkeypatch.setattr(runtime, "_deps", deps)
    yield deps


def _submit(deps: runs.RunDeps, prompt: str = EASY) -> str:
    with deps.sessions.begin() as session:
        return lifecycle.create(
            session, request=lifecycle.JobRequest(prompt=prompt), catalog=deps.catalog, settings=deps.settings
        ).id


def _status(deps: runs.RunDeps, job_id: str) -> JobStatus:
    with deps.sessions() as session:
        job = session.get(RequestLog, job_id)
        assert job is not None
        return job.status


def _hold_lease(deps: runs.RunDeps, job_id: str, *, seconds: int) -> None:
    """Mark the job as claimed by another worker whose lease runs `seconds` more."""
    with deps.sessions.begin() as session:
        session.execute(
            update(RequestLog)
            .where(RequestLog.id == job_id)
            .values(status=JobStatus.RUNNING, lease_expires_at=utcnow() + timedelta(seconds=seconds))
        )


def _run_as_a_worker_would(job_id: str) -> str | None:
    """Run the task body under a request context like a worker's (not `called_directly`).

    Celery's `self.retry` only builds the retry (with its countdown) when the task was not called
    directly; `is_eager` makes it raise that Retry instead of publishing it to a broker.
    """
    tasks.run_job.push_request(
        id="test-task-id", args=[job_id], kwargs={}, retries=0, is_eager=True, called_directly=False
    )
    try:
        return tasks.run_job.run(job_id)
    finally:
        tasks.run_job.pop_request()


def test_queued_job_runs_to_succeeded(deps: runs.RunDeps, fake: FakeLLMClient) -> None:
    job_id = _submit(deps)
    result = tasks.run_job.apply(args=[job_id])
    assert result.successful()
    assert result.result == "succeeded"
    assert _status(deps, job_id) is JobStatus.SUCCEEDED
    assert fake.calls == ["gpt-3.5-turbo"]


def test_finished_job_is_announced(deps: runs.RunDeps, finished: list[str]) -> None:
    job_id = _submit(deps)
    tasks.run_job.apply(args=[job_id])
    assert finished == [job_id]


def test_permanent_upstream_error_fails_the_job_without_a_task_retry(deps: runs.RunDeps, fake: FakeLLMClient) -> None:
    for model in ("gpt-3.5-turbo", "gpt-4"):  # the model and its fallback
        fake.script(model, PermanentLLMError("rejected", status_code=400, details={"error_class": "rejected"}))
    job_id = _submit(deps)
    result = tasks.run_job.apply(args=[job_id])
    assert result.successful()
    assert result.result == "failed"
    assert _status(deps, job_id) is JobStatus.FAILED
    assert fake.calls == ["gpt-3.5-turbo", "gpt-4"]


def test_job_claimed_elsewhere_is_left_to_its_owner(deps: runs.RunDeps, fake: FakeLLMClient) -> None:
    job_id = _submit(deps)
    _hold_lease(deps, job_id, seconds=LEASE_LEFT_S)
    result = tasks.run_job.apply(args=[job_id])
    assert result.successful()
    assert result.result is None
    assert fake.calls == []
    assert _status(deps, job_id) is JobStatus.RUNNING


def test_already_finished_job_returns_none_without_calling_the_client(
    deps: runs.RunDeps, fake: FakeLLMClient, finished: list[str]
) -> None:
    job_id = _submit(deps)
    tasks.run_job.apply(args=[job_id])
    # A redelivered message for the same job finds it finished.
    result = tasks.run_job.apply(args=[job_id])
    assert result.successful()
    assert result.result is None
    assert fake.calls == ["gpt-3.5-turbo"]
    assert finished == [job_id]


def test_unknown_job_returns_none_without_calling_the_client(deps: runs.RunDeps, fake: FakeLLMClient) -> None:
    assert _run_as_a_worker_would("no-such-job") is None
    assert fake.calls == []


def test_task_has_a_stable_name() -> None:
    assert tasks.run_job.name == "jobs.run"


def test_task_takes_its_dependencies_from_the_worker_runtime(deps: runs.RunDeps) -> None:
    assert runtime.get_deps() is deps


def test_a_job_waiting_for_admission_is_sent_back_with_a_countdown_then_runs(
    deps: runs.RunDeps, fake: FakeLLMClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fakeredis

    from shared.upstream.admission import Admission
    from shared.upstream.admission import RateLimits

    admission = Admission(fakeredis.FakeRedis(), clock=lambda: 1_000.0)
    admission.learn("gpt-3.5-turbo", RateLimits(limit_requests=60), throttled=False)
    for _ in range(5):
        admission.take("gpt-3.5-turbo", tokens=1, max_wait_s=60)
    monkeypatch.setattr(runtime, "_deps", runs.RunDeps(**{**deps.__dict__, "admission": admission}))
    sent: list[dict[str, object]] = []
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda **message: sent.append(message))
    job_id = _submit(deps)
    assert tasks.run_job.run(job_id) == "deferred"
    assert _status(deps, job_id) is JobStatus.QUEUED and fake.calls == []
    [message] = sent
    assert message["args"] == [job_id] and message["countdown"] == pytest.approx(5.0)
    assert message["queue"] == tasks.PROMPTS_QUEUE and message["kwargs"]["admitted"] == "gpt-3.5-turbo"
    # The message comes back at the job's turn: it runs, once, on the turn reserved for it.
    assert tasks.run_job.run(job_id, **message["kwargs"]) == str(JobStatus.SUCCEEDED)
    assert fake.calls == ["gpt-3.5-turbo"]
