"""GET /api/health: can we reach the database and the broker, and how many workers are alive."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint
from flask import Response
from flask import current_app
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shared.store.heartbeats import count_alive_workers
from shared.upstream.circuit_breaker import fast_failing_client
from web.circuits import circuit_states
from web.responses import HealthChecks
from web.responses import HealthView
from web.responses import send

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__, url_prefix="/api")


@bp.get("/health")
def get_health() -> tuple[Response, int]:
    """Answer 200 when the database and broker answer, 503 naming the failing check otherwise."""
    checks = HealthChecks(database="ok", broker="ok", workers=0)
    try:
        with current_app.extensions["db_engine"].connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        logger.warning("health: database unreachable", exc_info=True)
        checks.database = "unreachable"
    try:
        client = fast_failing_client(current_app.extensions["settings"].redis_url)
        with client:
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
