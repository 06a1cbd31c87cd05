"""The real path: gunicorn-served Flask, a Celery worker process, Redis, the simulator over HTTP.

Runs once on SQLite and once on PostgreSQL (a database of its own on the local server).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.store import migrate
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from tests.support.channels import Eavesdropper
from tests.support.databases import temporary_postgres_database
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import running_stack
from tests.support.stack import upstream_calls
from web import waiter

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_simulator")]

REDIS_DB = {"sqlite": 12, "postgresql": 13}
BUDGET_LIMIT = "1.0"
CONTRACT_FIELDS = {
    "job_id", "status", "success", "response", "model_used", "tier", "difficulty_score", "difficulty_level",
    "tokens_used", "prompt_tokens", "completion_tokens", "cost", "latency_ms", "escalated", "retry_count",
    "attempts", "metadata",
}  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db')}/router.db"
        return
    with temporary_postgres_database("model_router_it") as url:
        yield url


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory) -> Iterator[Stack]:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB[backend]}"
    migrate.upgrade("head", database_url=database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    settings = {
        **QUICK_RETRIES,
        "MONTHLY_BUDGET_LIMIT": BUDGET_LIMIT,
    }
    with running_stack(
        database_url=database_url, redis_url=redis_url, log_dir=tmp_path_factory.mktemp("logs"), settings=settings
    ) as stack:
        yield stack


def _row(db: Session, job_id: str) -> RequestLog:
    db.expire_all()
    row = db.get(RequestLog, job_id)
    assert row is not None
    return row


def test_health_reports_a_live_worker(stack: Stack) -> None:
    status, _, body = http("GET", f"{stack.web}/api/health")
    assert status == 200
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
    assert body["checks"]["workers"] >= 1


def test_sync_prompt_answers_200_with_every_field_and_a_row(stack: Stack, db: Session) -> None:
    status, _, body = http("POST", f"{stack.web}/api/prompt", {"prompt": "What is the capital of France?"})
    assert status == 200, body
    assert body.keys() >= CONTRACT_FIELDS
    assert (body["status"], body["success"], body["tier"]) == ("succeeded", True, "cheap")
    assert body["response"] and body["tokens_used"] == body["prompt_tokens"] + body["completion_tokens"]
    row = _row(db, body["job_id"])
    assert (row.status.value, row.model_used, row.response) == ("succeeded", body["model_used"], body["response"])
    assert row.cost == Decimal(str(body["cost"]))
    assert upstream_calls(stack) == {body["model_used"]: 1}


def test_a_sync_answer_wakes_on_its_own_channel_and_no_text_crosses_a_channel(stack: Stack) -> None:
    eavesdropper = Eavesdropper(stack.env["REDIS_URL"])
    try:
        prompt = f"Which word follows {uuid.uuid4().hex}?"
        started = time.monotonic()
        status, _, body = http("POST", f"{stack.web}/api/prompt", {"prompt": prompt})
        elapsed = time.monotonic() - started
        heard = eavesdropper.heard()
    finally:
        eavesdropper.close()
    assert status == 200, body
    # Woken by the announcement, not by the waiter's recheck.
    assert elapsed < waiter.RECHECK_S
    assert (f"model_router:job:{body['job_id']}".encode(), body["job_id"].encode()) in heard
    leaked = [m for m in heard for text in (prompt, body["response"]) if text.encode() in m[0] + m[1]]
    assert leaked == []


def test_async_prompt_answers_202_and_the_poll_reaches_succeeded(stack: Stack) -> None:
    status, headers, accepted = http("POST", f"{stack.web}/api/prompt", {"prompt": "Name a prime.", "wait": False})
    assert status == 202
    assert headers["Location"] == accepted["poll_url"]
    deadline = time.monotonic() + 30
    body = accepted
    while time.monotonic() < deadline:
        body = http("GET", f"{stack.web}{accepted['poll_url']}")[2]
        if body["status"] == "succeeded":
            break
        time.sleep(0.1)
    assert body["status"] == "succeeded"
    assert body.keys() >= CONTRACT_FIELDS


def test_a_429_burst_is_retried_and_reported(stack: Stack) -> None:
    http("POST", f"{stack.sim}/sim/config", {"fail_first": "429:2", "retry_after_s": 0.1})
    status, _, body = http("POST", f"{stack.web}/api/prompt", {"prompt": "What is 2 + 2?"})
    assert status == 200 and body["success"] is True
    assert body["retry_count"] == 2
    assert [a["outcome"] for a in body["attempts"]] == ["error", "error", "ok"]
    assert [a["status_code"] for a in body["attempts"][:2]] == [429, 429]
    stats = http("GET", f"{stack.sim}/sim/stats")[2]["models"][body["model_used"]]
    assert (stats["calls"], stats["faults"]) == (3, 2)


def test_a_hedging_answer_escalates(stack: Stack) -> None:
    http("POST", f"{stack.sim}/sim/config", {"faults": "hedge=1.0"})
    # An earlier test asked the same: only a fresh upstream call hedges.
    status, _, body = http(
        "POST", f"{stack.web}/api/prompt", {"prompt": "What is the capital of France?", "cache": False}
    )
    assert status == 200
    assert body["escalated"] is True
    assert [(a["tier"], a["purpose"]) for a in body["attempts"]] == [("cheap", "primary"), ("mid", "escalation")]
    assert body["cost"] == pytest.approx(sum(a["cost"] for a in body["attempts"]))


def test_upstream_down_fails_the_job_with_an_error_and_no_charge(stack: Stack) -> None:
    http("POST", f"{stack.sim}/sim/config", {"down": "gpt-4-turbo", "retry_after_s": 0.05})
    status, _, body = http("POST", f"{stack.web}/api/prompt", {"prompt": "Hello", "model": "gpt-4-turbo"})
    assert status == 200
    assert (body["status"], body["success"], body["cost"]) == ("failed", False, 0)
    assert body["error"]["code"] == "upstream_unavailable"
    assert body["retry_count"] == 2


def test_an_exhausted_budget_answers_402_without_calling_upstream(stack: Stack) -> None:
    before = upstream_calls(stack)
    body = {"prompt": "word " * 6400, "model": "gpt-4", "max_tokens": 4096}
    status, _, error = http("POST", f"{stack.web}/api/prompt", body)
    assert status == 402
    assert error["error"]["code"] == "budget_exceeded"
    time.sleep(0.3)
    assert upstream_calls(stack) == before


def test_budget_and_stats_add_up_to_the_rows(stack: Stack, db: Session) -> None:
    for prompt in ("One more question?", "Explain recursion briefly. Why does it need a base case?"):
        assert http("POST", f"{stack.web}/api/prompt", {"prompt": prompt})[0] == 200
    db.expire_all()
    rows = list(db.scalars(select(RequestLog)))
    ledger = db.scalars(select(MonthlyBudget)).one()
    budget = http("GET", f"{stack.web}/api/budget")[2]
    stats = http("GET", f"{stack.web}/api/stats")[2]
    spent = sum((row.cost for row in rows), Decimal(0))
    assert ledger.total_spent == spent
    assert ledger.reserved == sum((r.reserved_cost for r in rows if not r.status.is_terminal), Decimal(0))
    assert budget["total_spent"] == pytest.approx(float(spent))
    # The ledger counts the requests it reserved for; an answer from the response cache reserves nothing.
    assert budget["request_count"] == sum(not r.cached for r in rows)
    assert stats["cache_hits"] == sum(r.cached for r in rows)
    assert budget["monthly_limit"] == float(BUDGET_LIMIT)
    assert stats["total_requests"] == len(rows)
    assert stats["successful_requests"] == sum(r.status.value == "succeeded" for r in rows)
    assert stats["failed_requests"] == sum(r.status.value == "failed" for r in rows)
    assert stats["total_cost"] == pytest.approx(float(spent))
    assert stats["total_tokens"] == sum(r.tokens_used for r in rows)
    assert sum(m["requests"] for m in stats["by_model"].values()) == sum(r.model_used is not None for r in rows)
