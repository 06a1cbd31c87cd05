"""POST /api/estimate: where a prompt would go and what it may cost; nothing is called or reserved."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app

from shared.ledger import estimates
from shared.ledger import model_access
from shared.reports import stats
from web.auth import current_identity
from web.db import get_session
from web.requests import read_json_object
from web.requests import validate
from web.responses import CostRange
from web.responses import EstimateView
from web.responses import send
from web.schemas import PromptRequest

bp = Blueprint("estimate", __name__, url_prefix="/api")


@bp.post("/estimate")
def create_estimate() -> Response:
    """Answer the tier, model, difficulty and cost range for a /api/prompt body."""
    settings = current_app.extensions["settings"]
    catalog = current_app.extensions["catalog"]
    body = validate(
        PromptRequest,
        read_json_object(),
        max_prompt_chars=settings.max_prompt_chars,
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    # As its job would be: refused a model or tier its key may not use, else routed among the key's models.
    identity = current_identity()
    allowed = None if identity is None else identity.allowed_models
    model_access.check(catalog, allowed=allowed, model=body.model, tier=body.tier)
    session = get_session()
    chosen = estimates.estimate_cost(
        catalog=model_access.catalog_for(catalog, allowed),
        prompt=body.prompt,
        max_tokens=body.max_tokens,
        preference=body.preference,
        model=body.model,
        tier=body.tier,
        escalation=settings.escalation_enabled,
        typical_completion_tokens=lambda model: stats.get_typical_completion_tokens(session, model=model),
        estimator=body.difficulty_estimator or settings.difficulty_estimator,
    )
    return send(
        EstimateView(
            tier=chosen.decision.tier,
            model=chosen.decision.model,
            difficulty_score=chosen.difficulty.score,
            difficulty_level=chosen.difficulty.level,
            escalation_tier=chosen.decision.escalation_tier if settings.escalation_enabled else None,
            prompt_tokens_estimate=chosen.prompt_tokens,
            completion_tokens_estimate=chosen.completion_tokens,
            cost=CostRange(expected=chosen.expected_cost, worst_case=chosen.worst_case_cost),
        )
    )
