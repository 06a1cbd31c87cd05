"""GET /api/stats: totals over the recorded requests."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request

from shared.errors import InvalidInput
from shared.reports import latency
from shared.reports import savings
from shared.reports import stats
from web.auth import current_identity
from web.auth import sees_everything
from web.circuits import circuit_states
from web.db import get_session
from web.responses import LatencyPercentiles
from web.responses import StatsView
from web.responses import send

bp = Blueprint("stats", __name__, url_prefix="/api")


@bp.get("/stats")
def get_stats() -> Response:
    """Answer request counts, rates (0..100), cost, savings, latency and tokens, in total and per model."""
    identity = current_identity()
    only_key = None if sees_everything() or identity is None else identity.api_key_id
    since = _since(request.args.get("since"))
    session = get_session()
    result = stats.get_stats(session, since=since, api_key_id=only_key)
    where = savings.scope(since=since, api_key_id=only_key)
    saved = savings.Savings(
        cost=result.total_cost,
        baseline_cost=savings.get_baseline_cost(session, catalog=current_app.extensions["catalog"], where=where),
    )
    percentiles = latency.get_percentiles(session, where=where)
    return send(
        StatsView(
            total_requests=result.total_requests,
            successful_requests=result.successful_requests,
            failed_requests=result.failed_requests,
            success_rate=result.success_rate,
            total_cost=result.total_cost,
            unconfirmed_cost=result.unconfirmed_cost,
            avg_latency_ms=result.avg_latency_ms,
            total_tokens=result.total_tokens,
            escalation_rate=result.escalation_rate,
            total_retries=result.total_retries,
            fallback_attempts=result.fallback_attempts,
            baseline_cost=saved.baseline_cost,
            savings=saved.savings,
            savings_pct=saved.savings_pct,
            cache_hits=result.cache_hits,
            latency_ms=LatencyPercentiles.model_validate(percentiles, from_attributes=True),
            by_model=result.by_model,
            circuits=circuit_states(),
        )
    )


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("since must be an ISO 8601 date or time", details={"field": "since"}) from None
