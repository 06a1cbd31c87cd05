"""The service's Prometheus metrics and the functions that record them.

Counters and histograms are defined once here and updated by whichever process does the work: the web
tier (HTTP requests, cache hits, cancels) and the Celery workers (jobs, upstream calls). With
PROMETHEUS_MULTIPROC_DIR set, every process writes its values to files in that directory and the web tier
sums them on each scrape (prometheus_client's multiprocess mode); without it, one process serves its own.
Gauges that describe shared state (circuits, queues, budgets) are not kept per process: the web tier
computes them at scrape time (shared.observability.gauges).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from decimal import Decimal

from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import values

from shared.upstream.attempts import UNCONFIRMED
from shared.upstream.attempts import AttemptRecord

# prometheus_client reads this variable itself when it is imported, so it is taken from the environment
# (a value only in .env would never reach the library).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def process_identifier(pid: int | None = None) -> str:
    """Name this process's metric files: host name and pid.

    Containers that share one metrics volume (docker-compose's web and worker services) reuse the same small
    pids; the host name keeps their files apart, where the library's default (the pid alone) would mix them.
    """
    # No "_": the library splits file names on it to find a gauge's pid.
    host = socket.gethostname().replace("_", "-")
    return f"{host}-{os.getpid() if pid is None else pid}"


if os.environ.get(MULTIPROC_ENV):
    # Must precede the metrics below: each metric takes its value class when it is created.
    values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)

# A label value for "not known": a job cancelled before it ran has no model or tier.
NONE = "none"

HTTP_REQUESTS = Counter(
    "model_router_http_requests_total",
    "HTTP requests answered, by Flask route (the rule, not the raw path), method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "model_router_http_request_duration_seconds",
    "Time from receiving a request to returning its response (a synchronous prompt includes its wait).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
JOBS_FINISHED = Counter(
    "model_router_jobs_finished_total",
    "Jobs that reached a terminal state, counted once each, by the tier and model that answered.",
    ["tier", "model", "outcome", "error_code"],
)
ESCALATIONS = Counter(
    "model_router_escalations_total",
    "Finished jobs that escalated to a stronger tier after an unsure answer.",
    ["from_tier", "to_tier"],
)
FALLBACKS = Counter(
    "model_router_fallbacks_total",
    "Hand-offs of a job to a fallback model (the model named) after its model failed or its circuit was open.",
    ["model"],
)
RETRIES = Counter(
    "model_router_upstream_retries_total",
    "Upstream calls that repeated a failed call to the same model.",
    ["model"],
)
UPSTREAM_DURATION = Histogram(
    "model_router_upstream_call_duration_seconds",
    "Latency of each upstream call attempt, by model and outcome (ok, or the error class).",
    ["model", "outcome"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60),
)
TOKENS = Counter(
    "model_router_tokens_total",
    "Tokens billed by the upstream, by model and kind (prompt or completion).",
    ["model", "kind"],
)
COST = Counter(
    "model_router_cost_dollars_total",
    "Dollars spent upstream, by model (a float mirror of the Decimal ledger).",
    ["model"],
)
UNCONFIRMED_COST = Counter(
    "model_router_unconfirmed_cost_dollars_total",
    "Dollars charged at their worst-case bound for calls whose answer was lost (with their worker, or to an"
    " interruption) and may have been billed, by model; also counted in model_router_cost_dollars_total.",
    ["model"],
)
CACHE_HITS = Counter(
    "model_router_cache_hits_total",
    "Prompts answered from the response cache, by the model and tier of the cached answer.",
    ["model", "tier"],
)
JOBS_REQUEUED = Counter(
    "model_router_jobs_requeued_total",
    "Jobs the reaper sent to their queue again: their message was gone (lost, or a worker died holding the job). "
    "A backlog still held by the broker is never counted here.",
)
USAGE_OVER_BOUND = Counter(
    "model_router_usage_over_bound_total",
    "Jobs the upstream billed more than their bound (recorded as billed; their scopes' months are held), by "
    "the model whose usage passed it (none: only the job's total passed its reservation).",
    ["model"],
)
USAGE_INVALID = Counter(
    "model_router_usage_invalid_total",
    "Upstream calls whose reported usage could not be true (negative, not an integer, above the model's context"
    " window or the max_tokens sent, or missing), charged at their bound instead, by model.",
    ["model"],
)

# Attempts that never reached the upstream: no latency to observe, nothing billed.
NOT_CALLED = frozenset({"circuit_open", "over_reservation", "worker_lost"})


def multiprocess_dir() -> str | None:
    """Return the directory processes share their values through, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def record_http_request(*, route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request and observe its duration."""
    HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    HTTP_DURATION.labels(route=route).observe(seconds)


def record_cache_hit(*, model: str, tier: str) -> None:
    """Count one prompt answered from the response cache."""
    CACHE_HITS.labels(model=model, tier=tier).inc()


def record_requeued(count: int) -> None:
    """Count jobs the reaper sent to their queue again; call it after the sweep that decided it."""
    if count:
        JOBS_REQUEUED.inc(count)


def record_job_finished(*, tier: str | None, model: str | None, outcome: str, error_code: str | None) -> None:
    """Count one job that reached its terminal state; call it once, after the commit that ended it."""
    JOBS_FINISHED.labels(tier=tier or NONE, model=model or NONE, outcome=outcome, error_code=error_code or NONE).inc()


def record_attempts(attempts: Sequence[tuple[str, AttemptRecord]]) -> None:
    """Record a finished job's upstream attempts: latency, tokens, cost, retries and fallbacks.

    `attempts` are (purpose, record) pairs in call order, as the job stores them; consecutive records for
    the same model and purpose are one call and its retries.
    """
    previous: tuple[str, str] | None = None
    for purpose, record in attempts:
        slot = (purpose, record.model)
        if record.outcome == UNCONFIRMED:
            record_unconfirmed(model=record.model, cost=record.cost)
            previous = None
            continue
        if record.error_class in NOT_CALLED:
            previous = None
            continue
        if slot == previous:
            RETRIES.labels(model=record.model).inc()
        elif purpose == "fallback":
            FALLBACKS.labels(model=record.model).inc()
        previous = slot
        outcome = "ok" if record.outcome == "ok" else record.error_class or record.outcome
        UPSTREAM_DURATION.labels(model=record.model, outcome=outcome).observe(record.latency_ms / 1000)
        if record.prompt_tokens:
            TOKENS.labels(model=record.model, kind="prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            TOKENS.labels(model=record.model, kind="completion").inc(record.completion_tokens)
        if record.cost > Decimal(0):
            COST.labels(model=record.model).inc(float(record.cost))


def record_usage_over_bound(*, model: str | None) -> None:
    """Count one job billed over its bound; call it once, after the commit that recorded it."""
    USAGE_OVER_BOUND.labels(model=model or NONE).inc()


def record_usage_invalid(*, model: str) -> None:
    """Count one call whose reported usage could not be true; call it once, after the commit that recorded it."""
    USAGE_INVALID.labels(model=model).inc()


def record_unconfirmed(*, model: str | None, cost: Decimal) -> None:
    """Count dollars charged at their bound for calls that may have been billed without an answer to tell."""
    if cost > 0:
        COST.labels(model=model or NONE).inc(float(cost))
        UNCONFIRMED_COST.labels(model=model or NONE).inc(float(cost))


def record_escalation(*, from_tier: str, to_tier: str) -> None:
    """Count one job that escalated from `from_tier` to `to_tier`."""
    ESCALATIONS.labels(from_tier=from_tier, to_tier=to_tier).inc()
