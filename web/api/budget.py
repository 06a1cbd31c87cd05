"""GET /api/budget: this month's ledger."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify

from shared import budget
from shared.db.types import utcnow
from web.auth import current_identity
from web.auth import sees_everything
from web.db import get_session

bp = Blueprint("budget", __name__, url_prefix="/api")


@bp.get("/budget")
def get_budget() -> Response:
    """Answer the current UTC month's limit, spend, reservations and what remains.

    Keys off or an admin key: the global budget. Any other key: its own (its limit, or the global limit
    when it has none of its own).
    """
    global_limit = current_app.extensions["settings"].monthly_budget_limit
    identity = current_identity()
    if sees_everything() or identity is None:
        scope, limit = budget.GLOBAL_SCOPE, global_limit
    else:
        scope = budget.key_scope(identity.api_key_id)
        limit = global_limit if identity.monthly_budget is None else identity.monthly_budget
    view = budget.get_view(get_session(), scope=scope, period=budget.Period.of(utcnow()), limit=limit)
    return jsonify(
        {
            "scope": view.scope,
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
