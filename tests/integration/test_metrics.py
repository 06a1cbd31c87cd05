"""GET /metrics on the real stack: two gunicorn workers and a Celery worker, summed through the shared directory.

A bounded mix of traffic (answers, retries, an escalation, a failure, client errors) goes through the stack;
then every counter must add up to what the database recorded and to the requests sent, on every scrape,
whichever gunicorn worker answers it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.store import migrate
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from tests.support.databases import temporary_postgres_database
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import reset_simulator
from tests.support.stack import running_stack

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/9"
BUDGET_LIMIT = "5.0"
SCRAPES = 6
POLL_LIMIT_S = 30

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with temporary_postgres_database("model_router_metrics") as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory) -> Iterator[Stack]:
    migrate.upgrade("head", database_url=database_url)
    settings = {
        **QUICK_RETRIES,
        "MONTHLY_BUDGET_LIMIT": BUDGET_LIMIT,
        "LOG_FORMAT": "json",
    }
    with running_stack(
        database_url=database_url, redis_url=REDIS_URL, log_dir=tmp_path_factory.mktemp("logs"), settings=settings,
        web_workers=2,
    ) as stack:  # fmt: skip
        yield stack


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Counter[tuple[str, str, str]]:
    """Send the mix once; return how many requests were answered per (route, method, status)."""
    sent: Counter[tuple[str, str, str]] = Counter()

    def send(method: str, path: str, route: str, body: object = None, **headers: str) -> tuple[int, dict, object]:
        status, response_headers, answer = http(method, f"{stack.web}{path}", body, headers=headers)
        sent[(route, method, str(status))] += 1
        return status, response_headers, answer

    def prompt(text: str, **options: object) -> dict:
        status, _, body = send("POST", "/api/prompt", "/api/prompt", {"prompt": text, **options})
        assert status == 200, body
        return body

    for text in ("What is the capital of France?", "Name a prime.", "Explain recursion briefly. Why a base case?"):
        prompt(text)
    assert prompt("What is the capital of France?")["cached"] is True
    prompt("Compare two sorting algorithms.", tier="high")
    status, _, queued = send("POST", "/api/prompt", "/api/prompt", {"prompt": "Spell cat.", "wait": False})
    assert status == 202
    deadline = time.monotonic() + POLL_LIMIT_S
    while send("GET", queued["poll_url"], "/api/jobs/<job_id>")[2]["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, "the queued job never finished"
        time.sleep(0.2)

    http("POST", f"{stack.sim}/sim/config", {"fail_first": "429:2", "retry_after_s": 0.05})
    assert prompt("What is 2 + 2?")["retry_count"] == 2
    reset_simulator(stack)
    http("POST", f"{stack.sim}/sim/config", {"faults": "hedge=1.0"})
    assert prompt("What is the capital of Spain?")["escalated"] is True
    reset_simulator(stack)
    http("POST", f"{stack.sim}/sim/config", {"down": "gpt-4-turbo", "retry_after_s": 0.05})
    assert prompt("Hello", model="gpt-4-turbo")["status"] == "failed"
    reset_simulator(stack)

    assert send("GET", "/api/no-such-route", "unmatched")[0] == 404
    assert send("POST", "/api/prompt", "/api/prompt", {"prompt": ""})[0] == 400
    status, headers, body = send("POST", "/api/prompt", "/api/prompt", {"prompt": "Who wrote Hamlet?"},
                                 **{"X-Request-ID": "it-metrics-1"})  # fmt: skip
    assert status == 200 and headers["X-Request-ID"] == "it-metrics-1", body
    return sent


@pytest.fixture(scope="module")
def scrapes(stack: Stack, traffic: Counter[tuple[str, str, str]]) -> list[Samples]:
    """Scrape several times, so that both gunicorn workers answer; return each scrape's samples."""
    taken = []
    for _ in range(SCRAPES):
        status, headers, text = _get_text(f"{stack.web}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        taken.append(_samples(text))
    return taken


def _get_text(url: str) -> tuple[int, dict[str, str], str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, dict(response.headers), response.read().decode()


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Sum the samples of `name` by the given labels."""
    summed: dict[tuple[str, ...], float] = {}
    for (sample_name, label_set), value in samples.items():
        if sample_name == name:
            key = tuple(dict(label_set)[label] for label in labels)
            summed[key] = summed.get(key, 0.0) + value
    return summed


def test_every_scrape_counts_every_metrics_request_before_it(scrapes: list[Samples]) -> None:
    # Each gunicorn worker counts only the scrapes it served; the sum proves both are summed on every scrape.
    for number, samples in enumerate(scrapes):
        served = _by(samples, "model_router_http_requests_total", "route", "status").get(("/metrics", "200"), 0)
        assert served == number


def test_request_counters_add_up_to_the_requests_sent(
    scrapes: list[Samples], traffic: Counter[tuple[str, str, str]]
) -> None:
    counted = _by(scrapes[-1], "model_router_http_requests_total", "route", "method", "status")
    for key, count in traffic.items():
        assert counted.get(key) == count, key
    durations = _by(scrapes[-1], "model_router_http_request_duration_seconds_count", "route")
    for route in {route for route, _, _ in traffic}:
        assert durations[(route,)] == sum(n for (r, _, _), n in traffic.items() if r == route)


def test_job_counters_add_up_to_the_jobs_in_the_database(scrapes: list[Samples], db: Session) -> None:
    db.expire_all()
    rows = db.execute(
        select(
            func.coalesce(RequestLog.tier, "none"),
            func.coalesce(RequestLog.model_used, "none"),
            RequestLog.status,
            func.coalesce(RequestLog.error_code, "none"),
            func.count(),
        )
        .where(RequestLog.cached.is_(False))
        .group_by(RequestLog.tier, RequestLog.model_used, RequestLog.status, RequestLog.error_code)
    ).all()
    expected = {(tier, model, status.value, code): float(count) for tier, model, status, code, count in rows}
    assert {status for _, _, status, _ in expected} == {"succeeded", "failed"}
    for samples in scrapes:
        assert _by(samples, "model_router_jobs_finished_total", "tier", "model", "outcome", "error_code") == expected
    escalated = db.scalar(select(func.count()).where(RequestLog.escalated.is_(True)))
    assert escalated >= 1
    assert sum(_by(scrapes[-1], "model_router_escalations_total").values()) == escalated
    retries = db.scalar(select(func.sum(RequestLog.retry_count)))
    assert retries >= 2
    assert sum(_by(scrapes[-1], "model_router_upstream_retries_total").values()) == retries


def test_cache_hits_count_the_cached_jobs(scrapes: list[Samples], db: Session) -> None:
    db.expire_all()
    rows = db.execute(
        select(RequestLog.model_used, RequestLog.tier, func.count())
        .where(RequestLog.cached.is_(True))
        .group_by(RequestLog.model_used, RequestLog.tier)
    ).all()
    expected = {(model, tier): float(count) for model, tier, count in rows}
    assert sum(expected.values()) >= 1
    for samples in scrapes:
        assert _by(samples, "model_router_cache_hits_total", "model", "tier") == expected


def test_token_and_cost_counters_match_the_attempts_recorded(scrapes: list[Samples], db: Session) -> None:
    rows = db.execute(
        select(
            RequestAttempt.model,
            func.sum(RequestAttempt.prompt_tokens),
            func.sum(RequestAttempt.completion_tokens),
            func.count(),
        ).group_by(RequestAttempt.model)
    ).all()
    costs: dict[str, Decimal] = {}
    for model, cost in db.execute(select(RequestAttempt.model, RequestAttempt.cost)).all():
        costs[model] = costs.get(model, Decimal(0)) + cost
    tokens = _by(scrapes[-1], "model_router_tokens_total", "model", "kind")
    cost_counters = _by(scrapes[-1], "model_router_cost_dollars_total", "model")
    for model, prompt_tokens, completion_tokens, _ in rows:
        assert tokens.get((model, "prompt"), 0) == prompt_tokens
        assert tokens.get((model, "completion"), 0) == completion_tokens
        assert cost_counters.get((model,), 0) == pytest.approx(float(costs[model]), rel=1e-9, abs=1e-12)
    spent = db.scalar(select(func.sum(RequestLog.cost)))
    assert sum(cost_counters.values()) == pytest.approx(float(spent), rel=1e-9)
    calls = _by(scrapes[-1], "model_router_upstream_call_duration_seconds_count", "model")
    not_called = ("circuit_open", "over_reservation", "worker_lost")
    made = select(func.count()).where(func.coalesce(RequestAttempt.error_class, "").not_in(not_called))
    assert sum(calls.values()) == db.scalar(made)


def test_gauges_show_the_budget_circuits_and_queues(scrapes: list[Samples], db: Session) -> None:
    db.expire_all()
    ledger = db.scalars(select(MonthlyBudget).where(MonthlyBudget.scope == "global")).one()
    samples = scrapes[-1]
    assert _by(samples, "model_router_budget_limit_dollars", "scope") == {("global",): float(BUDGET_LIMIT)}
    assert _by(samples, "model_router_budget_spent_dollars", "scope")[("global",)] == pytest.approx(
        float(ledger.total_spent)
    )
    assert ledger.total_spent > 0
    assert _by(samples, "model_router_budget_reserved_dollars", "scope")[("global",)] == float(ledger.reserved)
    states = _by(samples, "model_router_circuit_state", "model")
    assert {"gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"} <= {model for (model,) in states}
    assert all(value == 1 for value in states.values())  # exactly one state per model is current
    assert _by(samples, "model_router_queue_depth", "queue") == {("prompts",): 0.0, ("batch",): 0.0}


def test_the_worker_logs_the_request_id_with_the_job(stack: Stack, traffic: object, db: Session) -> None:
    db.expire_all()
    job = db.scalars(select(RequestLog).where(RequestLog.request_id == "it-metrics-1")).one()
    lines = [json.loads(line) for line in stack.logs("worker", tail=2000).splitlines()[1:] if line.startswith("{")]
    events = {
        line.get("event") for line in lines if line.get("job_id") == job.id and line.get("request_id") == job.request_id
    }
    assert {"job_started", "job_attempt", "job_finished"} <= events
    assert not any("Who wrote Hamlet?" in json.dumps(line) for line in lines)
