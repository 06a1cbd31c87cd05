"""GET /api/budget: this month's ledger and the budget windows; DELETE /api/budget/hold: let a held scope
reserve again."""

from __future__ import annotations

import logging

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request
from werkzeug.exceptions import Forbidden

from shared.errors import InvalidInput
from shared.jobs import lifecycle
from shared.ledger import budget
from shared.ledger import windows as windows_ledger
from shared.store.models import ApiKey
from shared.store.types import utcnow
from web import submission
from web.auth import current_identity
from web.auth import sees_everything
from web.db import get_session
from web.responses import BudgetView
from web.responses import BudgetWindowView
from web.responses import send

logger = logging.getLogger(__name__)

bp = Blueprint("budget", __name__, url_prefix="/api")


@bp.get("/budget")
def get_budget() -> Response:
    """Answer the current UTC month's limit, spend, reservations and what remains, and the scope's windows.

    Keys off or an admin key: the global budget, or the scope `?scope=` names (`global`, `key:<id>`). Any other
    key: its own (its limit, or the global limit when it has none of its own); naming another scope is 403.
    """
    own = _own_scope()
    named = request.args.get("scope")
    if not named or named == own.scope:
        return _view(own)
    if not sees_everything():
        raise Forbidden("only an admin key may read another scope's budget")
    return _view(_limits_of(named))


@bp.delete("/budget/hold")
def clear_hold() -> Response:
    """Let a scope held by a job billed over its bound reserve again this month; answer its budget.

    Only an operator may: keys off, or an admin key. `?scope=` names the scope (`global`, `key:<id>`);
    without it, the caller's own.
    """
    if not sees_everything():
        raise Forbidden("only an admin key may clear a budget hold")
    limits = _own_scope()
    named = request.args.get("scope")
    session = get_session()
    if named and named != limits.scope:
        limits = _limits_of(named)
        # End the read here: the write transaction must start with its write (shared.store.session).
        session.rollback()
    scope = limits.scope
    held = budget.get_view(session, scope=scope, period=budget.Period.of(utcnow()), limit=limits.monthly).held_by_job
    session.rollback()
    if budget.clear_hold(session, scope=scope, period=budget.Period.of(utcnow())):
        logger.warning("budget hold cleared scope=%s held_by_job=%s", scope, held)
    session.commit()
    return _view(limits)


def _own_scope() -> budget.ScopeLimits:
    settings = current_app.extensions["settings"]
    identity = current_identity()
    if sees_everything() or identity is None:
        return lifecycle.limits_of(settings, None)[0]
    return lifecycle.limits_of(settings, submission.requester())[-1]


def _limits_of(scope: str) -> budget.ScopeLimits:
    """Return the limits in force for a named scope: the global ones, or a key's own (else the global monthly one)."""
    settings = current_app.extensions["settings"]
    if scope == budget.GLOBAL_SCOPE:
        return lifecycle.limits_of(settings, None)[0]
    key_id = scope.removeprefix("key:")
    known = scope.startswith("key:") and key_id.isascii() and key_id.isdigit() and int(key_id) < 2**31
    key = get_session().get(ApiKey, int(key_id)) if known else None
    if key is None:
        raise InvalidInput(f"unknown budget scope {scope!r}", details={"field": "scope"})
    return lifecycle.limits_of(settings, lifecycle.Requester.of_key(key))[-1]


def _view(limits: budget.ScopeLimits) -> Response:
    session = get_session()
    now = utcnow()
    view = budget.get_view(session, scope=limits.scope, period=budget.Period.of(now), limit=limits.monthly)
    windows = windows_ledger.views(session, scope=limits.scope, now=now, windows=limits.windows)
    month = {name: getattr(view, name) for name in BudgetView.model_fields if name != "windows"}
    shown = [BudgetWindowView.model_validate(window, from_attributes=True) for window in windows]
    return send(BudgetView(**month, windows=shown))
