"""The scrape-time collector: circuits, paces and queues from Redis, this month's budgets from the database."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.ledger import budget
from shared.observability import gauges
from shared.routing.catalog import ModelSpec
from shared.store import redis_clients
from shared.store.models import MonthlyBudget
from shared.store.types import utcnow
from shared.upstream.attempts import AttemptRecord
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.deployments import Balancer

MODELS = ("gpt-3.5-turbo", "gpt-4")
QUEUES = ("gauges-test-prompts", "gauges-test-batch")


@pytest.fixture
def ledger(sessions: sessionmaker[Session]) -> None:
    period = budget.Period.of(utcnow())
    with sessions.begin() as session:
        session.add_all(
            [
                MonthlyBudget(scope="global", year=period.year, month=period.month, monthly_limit=Decimal("100"),
                              total_spent=Decimal("12.5"), reserved=Decimal("0.25")),
                MonthlyBudget(scope="key:7", year=period.year, month=period.month, monthly_limit=Decimal("10"),
                              total_spent=Decimal("1"), reserved=Decimal(0)),
                # Last month's row is history, not a gauge.
                MonthlyBudget(scope="global", year=period.year - 1, month=period.month, monthly_limit=Decimal("9"),
                              total_spent=Decimal("9"), reserved=Decimal(0)),
            ]
        )  # fmt: skip


def _collect(
    client: redis.Redis, sessions: sessionmaker[Session], *, models: tuple[str, ...] = MODELS
) -> dict[str, dict[tuple[str, ...], float]]:
    sources = gauges.Sources(
        redis_client=client,
        breaker=CircuitBreaker(client, BreakerPolicy(min_failures=1, failure_rate=0.1)),
        balancer=Balancer(client),
        sessions=sessions,
        models=models,
        queues=QUEUES,
    )
    return {
        family.name: {tuple(sample.labels.values()): sample.value for sample in family.samples}
        for family in gauges.SharedStateCollector(lambda: sources).collect()
    }


def test_budgets_of_the_current_month_are_reported_per_scope(real_redis, sessions, ledger) -> None:
    collected = _collect(real_redis, sessions)
    assert collected["model_router_budget_spent_dollars"] == {("global",): 12.5, ("key:7",): 1.0}
    assert collected["model_router_budget_reserved_dollars"] == {("global",): 0.25, ("key:7",): 0.0}
    assert collected["model_router_budget_limit_dollars"] == {("global",): 100.0, ("key:7",): 10.0}


def test_queue_depth_counts_every_waiting_message_including_prioritised_ones(real_redis, sessions) -> None:
    real_redis.rpush(QUEUES[0], "a", "b", "c")
    real_redis.rpush(QUEUES[0] + "\x06\x169", "d")
    collected = _collect(real_redis, sessions)
    assert collected["model_router_queue_depth"] == {(QUEUES[0],): 4.0, (QUEUES[1],): 0.0}


def test_each_model_reports_its_current_circuit_state(real_redis, sessions) -> None:
    breaker = CircuitBreaker(real_redis, BreakerPolicy(min_failures=1, failure_rate=0.1))
    breaker.record_failure(breaker.allow("gpt-4"))
    states = _collect(real_redis, sessions)["model_router_circuit_state"]
    assert states[("gpt-4", "open")] == 1 and states[("gpt-4", "closed")] == 0
    assert states[("gpt-3.5-turbo", "closed")] == 1 and states[("gpt-3.5-turbo", "open")] == 0
    assert sum(states.values()) == len(MODELS)


def test_each_deployment_with_a_known_pace_reports_it(real_redis, sessions) -> None:
    spec = ModelSpec(name="gpt-4", tier="high", input_per_1k=Decimal("0.01"), output_per_1k=Decimal("0.03"),
                     deployment="key-a")  # fmt: skip
    answered = AttemptRecord(model="gpt-4", tier="high", outcome="ok", latency_ms=2000.0, started_at=utcnow(),
                             completion_tokens=400, deployment="key-a")  # fmt: skip
    Balancer(real_redis).learn(spec, answered)
    collected = _collect(real_redis, sessions, models=(*MODELS, "gpt-4@key-a", "gpt-4@key-b"))
    paces = collected["model_router_deployment_pace_seconds_per_token"]
    assert paces == {("gpt-4@key-a",): pytest.approx(0.005)}


def test_an_unreachable_redis_drops_only_the_queue_gauges(sessions, ledger) -> None:
    down = redis_clients.fast_failing("redis://127.0.0.1:1/0")
    collected = _collect(down, sessions)
    assert "model_router_queue_depth" not in collected
    assert collected["model_router_budget_spent_dollars"][("global",)] == 12.5
