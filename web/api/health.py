"""Health: GET /api/health for people and dashboards, GET /livez and /readyz for orchestrators' probes.

/livez says only that the process serves requests: it touches neither the database nor Redis, so an outage of
either never makes Kubernetes restart healthy web pods. /readyz says whether this pod can do its work (the
database and the broker answer), so that a load balancer stops sending it requests while they don't.
"""

from __future__ import annotations

import logging
from typing import Literal

import redis
from flask import Blueprint
from flask import Response
from flask import current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.store import redis_clients
from shared.store.heartbeats import count_alive_workers
from web.circuits import circuit_states
from web.responses import HealthChecks
from web.responses import HealthView
from web.responses import LivenessView
from web.responses import ReadinessChecks
from web.responses import ReadinessView
from web.responses import send

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__, url_prefix="/api")
probes = Blueprint("probes", __name__)

Check = Literal["ok", "unreachable"]


@bp.get("/health")
def get_health() -> tuple[Response, int]:
    """Answer 200 when the database and broker answer, 503 naming the failing check otherwise."""
    checks = HealthChecks(database=_database_status(), broker="ok", workers=0)
    try:
        with _broker_client() as client:
            client.ping()
            checks.workers = count_alive_workers(client)
            checks.circuits = circuit_states(client)
    except redis.RedisError:
        logger.warning("health: broker unreachable", exc_info=True)
        checks.broker = "unreachable"
    healthy = checks.database == "ok" and checks.broker == "ok"
    # Unset fields stay out: `circuits` is there only when the broker answered.
    view = HealthView(status="ok" if healthy else "unavailable", checks=checks)
    return send(view, exclude_unset=True), 200 if healthy else 503


@probes.get("/livez")
def get_liveness() -> Response:
    """Answer 200 while the process serves requests, whatever the database and the broker do."""
    return send(LivenessView(status="ok"))


@probes.get("/readyz")
def get_readiness() -> tuple[Response, int]:
    """Answer 200 when the database and the broker answer, 503 naming the one that does not."""
    checks = ReadinessChecks(database=_database_status(), broker=_broker_status())
    healthy = checks.database == "ok" and checks.broker == "ok"
    return send(ReadinessView(status="ok" if healthy else "unavailable", checks=checks)), 200 if healthy else 503


def _database_status() -> Check:
    try:
        with current_app.extensions["db_engine"].connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        logger.warning("health: database unreachable", exc_info=True)
        return "unreachable"
    return "ok"


def _broker_status() -> Check:
    try:
        with _broker_client() as client:
            client.ping()
    except redis.RedisError:
        logger.warning("health: broker unreachable", exc_info=True)
        return "unreachable"
    return "ok"


def _broker_client() -> redis.Redis:
    return redis_clients.fast_failing(current_app.extensions["settings"].redis_url)
