"""GET /api/reports/costs: a week's or a month's costs, savings and breakdowns."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request

from shared.reports import costs
from shared.store.types import utcnow
from web import auth
from web import requests
from web import schemas
from web.db import get_session
from web.responses import CostReportView
from web.responses import send

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
    return send(CostReportView.model_validate(report, from_attributes=True))
