"""Gauges of shared state, read from Redis and the database when Prometheus scrapes, never per request.

Circuit states, deployments' paces and queue depths live in Redis and budgets in the database, shared by every
process; a per-process gauge would go stale the moment another process changed them. One source that cannot be
read (Redis or the database down) drops its gauges from that scrape and logs why; the others still answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.ledger import budget
from shared.store.models import MonthlyBudget
from shared.store.types import utcnow
from shared.upstream import circuit_breaker
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.deployments import Balancer

logger = logging.getLogger(__name__)

CIRCUIT_STATES = (circuit_breaker.CLOSED, circuit_breaker.HALF_OPEN, circuit_breaker.OPEN)
# Celery's Redis transport keeps messages sent with a priority in sibling lists of the queue's own.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@dataclass(frozen=True)
class Sources:
    """Where the gauges are read from: the broker's Redis, the circuit breakers, the balancer, the database."""

    redis_client: redis.Redis
    breaker: CircuitBreaker
    balancer: Balancer
    sessions: sessionmaker[Session]
    models: Sequence[str]
    queues: Sequence[str]


class SharedStateCollector(Collector):
    """A prometheus_client collector computing circuit, pace, queue and budget gauges on each scrape."""

    def __init__(self, sources: Callable[[], Sources]) -> None:
        # Built on the first scrape, in the process that serves it (not at app creation, before a fork).
        self._sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sources = self._sources()
        for read in (_circuits, _paces, _queues, _budgets):
            try:
                yield from read(sources)
            except (redis.RedisError, SQLAlchemyError, OSError):
                logger.warning("metrics: %s unavailable for this scrape", read.__name__.strip("_"), exc_info=True)


def _circuits(sources: Sources) -> list[GaugeMetricFamily]:
    family = GaugeMetricFamily(
        "model_router_circuit_state",
        "1 for each model's (or deployment's) current circuit state (closed, half_open, open), 0 for the others.",
        labels=["model", "state"],
    )
    for model, state in sources.breaker.states(sources.models).items():
        for candidate in CIRCUIT_STATES:
            family.add_metric([model, candidate], 1.0 if state == candidate else 0.0)
    return [family]


def _paces(sources: Sources) -> list[GaugeMetricFamily]:
    family = GaugeMetricFamily(
        "model_router_deployment_pace_seconds_per_token",
        "Each deployment's recent seconds per output token, which its model's calls are balanced by (known ones).",
        labels=["model"],
    )
    for model, pace in sources.balancer.paces(sources.models).items():
        family.add_metric([model], pace)
    return [family]


def _queues(sources: Sources) -> list[GaugeMetricFamily]:
    family = GaugeMetricFamily(
        "model_router_queue_depth", "Messages waiting in each Celery queue (Redis list lengths).", labels=["queue"]
    )
    pipe = sources.redis_client.pipeline(transaction=False)
    for queue in sources.queues:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths = pipe.execute()
    per_queue = len(PRIORITY_SUFFIXES)
    for index, queue in enumerate(sources.queues):
        family.add_metric([queue], float(sum(lengths[index * per_queue : (index + 1) * per_queue])))
    return [family]


def _budgets(sources: Sources) -> list[GaugeMetricFamily]:
    period = budget.Period.of(utcnow())
    families = {
        "spent": GaugeMetricFamily(
            "model_router_budget_spent_dollars", "Dollars settled this UTC month, per budget scope.", labels=["scope"]
        ),
        "reserved": GaugeMetricFamily(
            "model_router_budget_reserved_dollars",
            "Dollars reserved by unfinished jobs this UTC month, per budget scope.",
            labels=["scope"],
        ),
        "limit": GaugeMetricFamily(
            "model_router_budget_limit_dollars", "This UTC month's limit, per budget scope.", labels=["scope"]
        ),
    }
    with sources.sessions() as session:
        rows = session.execute(
            select(MonthlyBudget.scope, MonthlyBudget.total_spent, MonthlyBudget.reserved, MonthlyBudget.monthly_limit)
            .where(MonthlyBudget.year == period.year, MonthlyBudget.month == period.month)
            .order_by(MonthlyBudget.scope)
        ).all()
    for scope, spent, reserved, limit in rows:
        families["spent"].add_metric([scope], float(spent))
        families["reserved"].add_metric([scope], float(reserved))
        families["limit"].add_metric([scope], float(limit))
    return list(families.values())
