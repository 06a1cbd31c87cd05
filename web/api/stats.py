"""GET /api/stats: totals over the recorded requests."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request

from shared import stats
from shared.errors import InvalidInput
from web.auth import current_identity
from web.auth import sees_everything
from web.circuits import circuit_states
from web.db import get_session

bp = Blueprint("stats", __name__, url_prefix="/api")


@bp.get("/stats")
def get_stats() -> Response:
    """Answer request counts, rates (0..100), cost, latency and tokens, in total and per model."""
    identity = current_identity()
    only_key = None if sees_everything() or identity is None else identity.api_key_id
    result = stats.get_stats(get_session(), since=_since(request.args.get("since")), api_key_id=only_key)
    return jsonify(
        {
            "total_requests": result.total_requests,
            "successful_requests": result.successful_requests,
            "failed_requests": result.failed_requests,
            "success_rate": result.success_rate,
            "total_cost": result.total_cost,
            "avg_latency_ms": result.avg_latency_ms,
            "total_tokens": result.total_tokens,
            "escalation_rate": result.escalation_rate,
            "cached_requests": result.cached_requests,
            "total_retries": result.total_retries,
            "fallback_attempts": result.fallback_attempts,
            "by_model": {
                model: {
                    "requests": row.requests,
                    "cost": row.cost,
                    "avg_latency_ms": row.avg_latency_ms,
                    "tokens": row.tokens,
                }
                for model, row in result.by_model.items()
            },
            "circuits": circuit_states(),
        }
    )


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("since must be an ISO 8601 date or time", details={"field": "since"}) from None
