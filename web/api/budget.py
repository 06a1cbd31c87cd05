"""GET /api/budget: this month's ledger; DELETE /api/budget/hold: let a held scope reserve again."""

from __future__ import annotations

import logging
from decimal import Decimal

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request
from werkzeug.exceptions import Forbidden

from shared.errors import InvalidInput
from shared.ledger import budget
from shared.store.models import ApiKey
from shared.store.types import utcnow
from web.auth import current_identity
from web.auth import sees_everything
from web.db import get_session
from web.responses import BudgetView
from web.responses import send

logger = logging.getLogger(__name__)

bp = Blueprint("budget", __name__, url_prefix="/api")


@bp.get("/budget")
def get_budget() -> Response:
    """Answer the current UTC month's limit, spend, reservations and what remains.

    Keys off or an admin key: the global budget. Any other key: its own (its limit, or the global limit
    when it has none of its own).
    """
    scope, limit = _own_scope()
    return _view(scope, limit)


@bp.delete("/budget/hold")
def clear_hold() -> Response:
    """Let a scope held by a job billed over its bound reserve again this month; answer its budget.

    Only an operator may: keys off, or an admin key. `?scope=` names the scope (`global`, `key:<id>`);
    without it, the caller's own.
    """
    if not sees_everything():
        raise Forbidden("only an admin key may clear a budget hold")
    scope, limit = _own_scope()
    named = request.args.get("scope")
    session = get_session()
    if named and named != scope:
        scope, limit = named, _limit_of(named)
        # End the read here: the write transaction must start with its write (shared.store.session).
        session.rollback()
    held = budget.get_view(session, scope=scope, period=budget.Period.of(utcnow()), limit=limit).held_by_job
    session.rollback()
    if budget.clear_hold(session, scope=scope, period=budget.Period.of(utcnow())):
        logger.warning("budget hold cleared scope=%s held_by_job=%s", scope, held)
    session.commit()
    return _view(scope, limit)


def _own_scope() -> tuple[str, Decimal]:
    global_limit = current_app.extensions["settings"].monthly_budget_limit
    identity = current_identity()
    if sees_everything() or identity is None:
        return budget.GLOBAL_SCOPE, global_limit
    limit = global_limit if identity.monthly_budget is None else identity.monthly_budget
    return budget.key_scope(identity.api_key_id), limit


def _limit_of(scope: str) -> Decimal:
    """Return the limit in force for a named scope: the global limit, or a key's own (else the global one)."""
    global_limit = current_app.extensions["settings"].monthly_budget_limit
    if scope == budget.GLOBAL_SCOPE:
        return global_limit
    key_id = scope.removeprefix("key:")
    known = scope.startswith("key:") and key_id.isascii() and key_id.isdigit() and int(key_id) < 2**31
    key = get_session().get(ApiKey, int(key_id)) if known else None
    if key is None:
        raise InvalidInput(f"unknown budget scope {scope!r}", details={"field": "scope"})
    return global_limit if key.monthly_budget is None else key.monthly_budget


def _view(scope: str, limit: Decimal) -> Response:
    view = budget.get_view(get_session(), scope=scope, period=budget.Period.of(utcnow()), limit=limit)
    return send(BudgetView.model_validate(view, from_attributes=True))
