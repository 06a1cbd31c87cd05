"""GET /api/budget: this month's ledger."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify

from shared import budget
from shared.db.types import utcnow
from web.db import get_session

bp = Blueprint("budget", __name__, url_prefix="/api")


@bp.get("/budget")
def get_budget() -> Response:
    """Answer the current UTC month's limit, spend, reservations and what remains."""
    view = budget.get_view(
        get_session(),
        period=budget.Period.of(utcnow()),
        limit=current_app.extensions["settings"].monthly_budget_limit,
    )
    return jsonify(
        {
            "year": view.year,
            "month": view.month,
            "monthly_limit": view.monthly_limit,
            "total_spent": view.total_spent,
            "reserved": view.reserved,
            "remaining": view.remaining,
            "percentage_used": round(view.percentage_used, 4),
            "request_count": view.request_count,
        }
    )
