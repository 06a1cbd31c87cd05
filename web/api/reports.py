"""GET /api/reports/costs: a week's or a month's costs, savings and breakdowns."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify
from flask import request

from shared.reports import costs
from shared.store.types import utcnow
from web import auth
from web import requests
from web import schemas
from web.db import get_session

bp = Blueprint("reports", __name__, url_prefix="/api/reports")


@bp.get("/costs")
def get_cost_report() -> Response:
    """Answer the period's costs (the caller's own, or everyone's for an admin) with every day listed."""
    query = requests.validate(schemas.CostReportQuery, request.args.to_dict())
    identity = auth.current_identity()
    report = costs.get(
        get_session(),
        catalog=current_app.extensions["catalog"],
        period=query.period,
        today=utcnow().date(),
        api_key_id=None if auth.sees_everything() or identity is None else identity.api_key_id,
    )
    return jsonify(_body(report))


def _body(report: costs.CostReport) -> dict[str, Any]:
    return {
        "period": report.period,
        "since": report.window.since.isoformat(),
        "until": report.window.until.isoformat(),
        "total_cost": report.totals.cost,
        "unconfirmed_cost": report.unconfirmed_cost,
        "baseline_cost": report.totals.baseline_cost,
        "savings": report.totals.savings,
        "savings_pct": report.totals.savings_pct,
        "requests": report.requests,
        "by_day": [
            {
                "date": day.day.isoformat(),
                "cost": day.cost,
                "baseline_cost": day.baseline_cost,
                "requests": day.requests,
            }
            for day in report.by_day
        ],
        "by_model": [
            {
                "model": row.model,
                "cost": row.cost,
                "unconfirmed_cost": row.unconfirmed_cost,
                "requests": row.requests,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
            }
            for row in report.by_model
        ],
        "by_tier": [{"tier": row.tier, "cost": row.cost, "requests": row.requests} for row in report.by_tier],
        "by_key": [
            {"api_key_id": row.api_key_id, "name": row.name, "cost": row.cost, "requests": row.requests}
            for row in report.by_key
        ],
    }
