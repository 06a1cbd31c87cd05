"""Job events from the worker: lines carrying the job and request ids, and a job counted once however it ends."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from shared.jobs import lifecycle
from shared.jobs import reaper
from shared.jobs import runs
from shared.observability import logs
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.types import utcnow
from tests.support.fakes import FakeLLMClient
from tests.support.prompts import EASY

CHEAP = {"tier": "cheap", "model": "gpt-3.5-turbo", "outcome": "succeeded", "error_code": "none"}


@pytest.fixture
def deps(sessions, catalog, settings) -> runs.RunDeps:
    return runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=FakeLLMClient(),
                        sleep=lambda _: None)  # fmt: skip


def _finished(**labels: str) -> float:
    return REGISTRY.get_sample_value("model_router_jobs_finished_total", labels) or 0.0


def _submit(deps: runs.RunDeps, *, request_id: str | None = None) -> str:
    with logs.bound(request_id=request_id), deps.sessions.begin() as session:
        return lifecycle.create(session, request=lifecycle.JobRequest(prompt=EASY), catalog=deps.catalog,
                           settings=deps.settings).id  # fmt: skip


def test_a_run_logs_its_events_with_the_job_and_request_ids_and_no_prompt(deps, log_lines) -> None:
    job_id = _submit(deps, request_id="req-worker-1")
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    events = [line["event"] for line in lines if "event" in line]
    assert events == ["job_started", "job_attempt", "job_finished"]
    assert all((line["job_id"], line["request_id"]) == (job_id, "req-worker-1") for line in lines if "event" in line)
    finished = lines[-1]
    assert (finished["status"], finished["model"], finished["tier"]) == ("succeeded", "gpt-3.5-turbo", "cheap")
    assert EASY not in log_lines.getvalue()


def test_a_job_is_counted_once_even_when_its_message_is_delivered_twice(deps) -> None:
    job_id = _submit(deps)
    before = _finished(**CHEAP)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert runs.run(job_id, deps=deps) is None
    assert _finished(**CHEAP) == before + 1


def test_a_job_the_reaper_fails_is_counted_once(deps) -> None:
    job_id = _submit(deps)
    assert isinstance(runs._claim(job_id, deps=deps), runs.Claim)
    with deps.sessions.begin() as session:
        session.execute(
            update(RequestLog)
            .where(RequestLog.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1), run_count=deps.settings.job_max_runs)
        )
    labels = {"tier": "none", "model": "none", "outcome": "failed", "error_code": "worker_lost"}
    before = _finished(**labels)
    assert len(reaper.sweep(sessions=deps.sessions, settings=deps.settings).failed) == 1
    assert reaper.sweep(sessions=deps.sessions, settings=deps.settings).failed == []
    assert _finished(**labels) == before + 1
