"""GET /metrics: every process's counters and histograms, plus gauges of shared state read at scrape time.

Access: open when API keys are off; with REQUIRE_API_KEY on, an admin key, unless METRICS_PUBLIC=true
(for a Prometheus on a private network that should scrape without credentials).
"""

from __future__ import annotations

import functools

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import current_app
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import REGISTRY
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from werkzeug.exceptions import Forbidden

from shared.observability import gauges
from shared.observability import metrics
from shared.store import redis_clients
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.deployments import Balancer
from web import auth
from worker.celery_app import BATCH_QUEUE
from worker.celery_app import PROMPTS_QUEUE

bp = Blueprint("metrics", __name__)


def init_app(app: Flask) -> None:
    """Build the registry /metrics serves and register the route."""
    registry = CollectorRegistry()
    if metrics.multiprocess_dir() is not None:
        # Sums the values every web and worker process wrote to the shared directory.
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)  # this process's own metrics
    registry.register(gauges.SharedStateCollector(functools.cache(functools.partial(_sources, app))))
    app.extensions["metrics_registry"] = registry
    app.register_blueprint(bp)


def _sources(app: Flask) -> gauges.Sources:
    settings = app.extensions["settings"]
    client = redis_clients.fast_failing(settings.redis_url)
    return gauges.Sources(
        redis_client=client,
        breaker=CircuitBreaker(client, BreakerPolicy.from_settings(settings)),
        balancer=Balancer(client),
        sessions=app.extensions["db_sessions"],
        models=app.extensions["catalog"].upstream_keys,
        queues=(PROMPTS_QUEUE, BATCH_QUEUE),
    )


@bp.get("/metrics")
def serve_metrics() -> Response:
    """Answer the metrics in Prometheus's text format."""
    settings = current_app.extensions["settings"]
    if settings.api_keys_required and not settings.metrics_public and not auth.authenticate_bearer().is_admin:
        raise Forbidden("/metrics needs an admin key")
    body = generate_latest(current_app.extensions["metrics_registry"])
    return Response(body, content_type=CONTENT_TYPE_LATEST)
