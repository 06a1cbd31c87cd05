"""A hostile upstream through the real stack on PostgreSQL: every bad answer ends its job once, with its cost.

gunicorn, a Celery worker on the prefork pool (whose soft time limit interrupts a task), beat's reaper sweeping
every second, Redis and PostgreSQL; the workers' OPENAI_BASE_URL is tests.support.hostile, each job's prompt
naming the way it answers. Usage that cannot be true ends its job charged at the bound and flagged
`usage_invalid`; an answer that is not a chat completion fails its job `upstream_bad_response`, each call
charged at its bound; a body trickled or hung ends at the job's deadline. None of them sends its job round the
reaper (run_count 1) nor makes a call the job did not record.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import create_engine
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm import selectinload

from shared.ledger import call_bound
from shared.routing.catalog import load_catalog
from shared.store import migrate
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.chaos import PrivateRedis
from tests.support.databases import temporary_postgres_database
from tests.support.hostile import HostileUpstream
from tests.support.hostile import running_hostile
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import running_stack

pytestmark = pytest.mark.integration

LEASE_S = 20
DEADLINE_S = 4
MAX_TOKENS = 64
USAGE_INVALID = ("negative_usage", "huge_usage", "fractional_usage", "over_context", "over_max_tokens", "no_usage")
BAD_RESPONSE = ("non_string_content", "missing_choices", "bad_finish_reason", "non_json", "json_array")
TOO_SLOW = ("trickle", "hang_body")
CATALOG = load_catalog(SEED_CATALOG_PATH)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with running_hostile(interval_s=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def stack(hostile: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis_server = PrivateRedis(work_dir=tmp_path_factory.mktemp("redis"))
    redis_server.start()
    try:
        with temporary_postgres_database() as database_url:
            migrate.upgrade("head", database_url=database_url)
            settings = {
                **QUICK_RETRIES,
                "OPENAI_BASE_URL": hostile.base_url,
                "MONTHLY_BUDGET_LIMIT": "1000",
                "JOB_LEASE_S": str(LEASE_S),
                "REAPER_INTERVAL_S": "1",
                "ESCALATION_ENABLED": "false",
            }
            with running_stack(
                database_url=database_url,
                redis_url=redis_server.url,
                log_dir=tmp_path_factory.mktemp("logs"),
                settings=settings,
                worker_pool="prefork",
                beat=True,
            ) as stack:
                yield stack
    finally:
        redis_server.close()


def _submit(stack: Stack, mode: str) -> str:
    body = {"prompt": f"{mode} What is the capital of France?", "tier": "cheap", "max_tokens": MAX_TOKENS,
            "deadline_s": DEADLINE_S, "wait": False}  # fmt: skip
    status, _, accepted = http("POST", f"{stack.web}/api/prompt", body)
    assert status == 202, accepted
    return accepted["job_id"]


def _stream(stack: Stack, mode: str) -> str:
    """Ask for a streamed answer through /v1; return the whole SSE body."""
    body = {"model": "gpt-3.5-turbo", "stream": True, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": f"{mode} hi"}]}  # fmt: skip
    request = urllib.request.Request(
        f"{stack.web}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


def _bound(job: RequestLog, model: str) -> Decimal:
    call = call_bound.call_bound(
        prompt=job.prompt, max_tokens=job.max_tokens, messages=job.messages, options=job.upstream_options
    )
    return call.cost(CATALOG.get_model(model))


def test_each_hostile_answer_ends_its_job_once_charged_at_the_bound(stack: Stack, hostile: HostileUpstream) -> None:
    started = time.monotonic()
    submitted = {mode: _submit(stack, mode) for mode in (*USAGE_INVALID, *BAD_RESPONSE, *TOO_SLOW)}
    streams = {mode: _stream(stack, mode) for mode in ("stream_non_json_later", "stream_negative_usage")}
    deadline = time.monotonic() + DEADLINE_S + 30
    pending = set(submitted.values())
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            if http("GET", f"{stack.web}/api/jobs/{job_id}")[2]["status"] in ("succeeded", "failed"):
                pending.discard(job_id)
        time.sleep(0.5)
    assert not pending
    # Within the deadline, however slowly the body came.
    assert time.monotonic() - started < DEADLINE_S + 30
    assert "upstream_bad_response" in streams["stream_non_json_later"]
    assert "[DONE]" in streams["stream_negative_usage"]
    # A lease and more, with the reaper sweeping every second: nothing goes round it.
    time.sleep(LEASE_S + 2)

    engine = create_engine(stack.env["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session:
            jobs = {job.prompt.split()[0]: job for job in session.scalars(
                select(RequestLog).options(selectinload(RequestLog.attempts)))}  # fmt: skip
            spent, reserved = session.execute(select(MonthlyBudget.total_spent, MonthlyBudget.reserved)).one()
    finally:
        engine.dispose()

    assert {mode: job.run_count for mode, job in jobs.items()} == dict.fromkeys(jobs, 1)
    for mode in (*USAGE_INVALID, "stream_negative_usage"):
        job = jobs[mode]
        assert (job.status.value, job.usage_invalid, job.error_code) == ("succeeded", True, None), mode
        assert job.cost == job.unconfirmed_cost == _bound(job, job.model_used) > 0, mode
    for mode in (*BAD_RESPONSE, "stream_non_json_later"):
        job = jobs[mode]
        assert (job.status.value, job.error_code) == ("failed", "upstream_bad_response"), mode
        called = [attempt for attempt in job.attempts if attempt.error_class == "bad_response"]
        assert len(called) == hostile.calls_in(mode) >= 1, mode
        assert all(attempt.cost == _bound(job, attempt.model) for attempt in called), mode
        assert job.cost == job.unconfirmed_cost == sum(attempt.cost for attempt in called), mode
    for mode in TOO_SLOW:
        job = jobs[mode]
        assert (job.status.value, job.error_code) == ("failed", "upstream_unavailable"), mode
        assert job.attempts[0].error_class == "timeout", mode
        assert (job.finished_at - job.created_at).total_seconds() < DEADLINE_S + 3, mode
    # The ledger holds every job's cost, and nothing is left reserved.
    assert (spent, reserved) == (sum(job.cost for job in jobs.values()), 0)
    assert all(job.settled for job in jobs.values())
