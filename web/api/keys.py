"""/api/keys: API keys managed over HTTP by an admin key (create, list, change limits, revoke).

An admin key, or keys off (every caller is then an operator, as for DELETE /api/budget/hold); any other key is
403. A new key's secret is in the creation's answer only: the database holds its hash.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import url_for
from werkzeug.exceptions import Forbidden

from shared.errors import NotFound
from shared.ledger import api_keys
from shared.ledger import window_spans
from shared.store.models import ApiKey
from shared.store.types import utcnow
from web.auth import sees_everything
from web.db import get_session
from web.requests import read_json_object
from web.requests import validate
from web.responses import CreatedKey
from web.responses import KeyList
from web.responses import KeyView
from web.responses import send
from web.schemas import KeyCreateRequest
from web.schemas import KeyUpdateRequest

bp = Blueprint("keys", __name__, url_prefix="/api/keys")
# Key ids are database integers: a larger number names no key (404) rather than overflowing a query.
MAX_KEY_ID = 2**31 - 1


@bp.url_value_preprocessor
def _bounded_id(endpoint: str | None, values: dict[str, Any] | None) -> None:
    if values is not None and values.get("key_id", 1) > MAX_KEY_ID:
        raise NotFound(f"no API key {values['key_id']}")


@bp.before_request
def _admins_only() -> None:
    if not sees_everything():
        raise Forbidden("only an admin key may manage API keys")


@bp.get("")
def list_keys() -> Response:
    """Answer every key, oldest first, with its limits and status (never the key itself)."""
    session = get_session()
    now = utcnow()
    return send(KeyList(keys=[key_view(row, now=now) for row in api_keys.list_(session)]))


@bp.post("")
def create_key() -> tuple[Response, int]:
    """Create a key and answer it once, with its settings."""
    body = validate(KeyCreateRequest, read_json_object())
    session = get_session()
    settings = _settings(body.model_dump(exclude={"name", "is_admin"}))
    row, key = api_keys.create(
        session, name=body.name, is_admin=body.is_admin, known_models=_known_models(), **settings
    )
    session.commit()
    view = key_view(row, now=utcnow())
    response = send(CreatedKey(**dict(view), key=key), 201)
    response.headers["Location"] = url_for("keys.get_key", key_id=row.id)
    return response, 201


@bp.get("/<int:key_id>")
def get_key(key_id: int) -> Response:
    """Answer one key."""
    return send(key_view(api_keys.get_or_raise(get_session(), key_id=key_id), now=utcnow()))


@bp.patch("/<int:key_id>")
def update_key(key_id: int) -> Response:
    """Change the fields sent (null clears a limit); a revoked key is 400."""
    body = validate(KeyUpdateRequest, read_json_object())
    session = get_session()
    changes = _settings(body.model_dump(include=body.model_fields_set))
    row = api_keys.update(session, key_id=key_id, changes=changes, known_models=_known_models())
    session.commit()
    return send(key_view(row, now=utcnow()))


@bp.delete("/<int:key_id>")
def revoke_key(key_id: int) -> Response:
    """Revoke the key: every request with it is 401 from now on. Revoking twice keeps the first time."""
    session = get_session()
    row = api_keys.revoke(session, key_id_or_prefix=key_id)
    session.commit()
    return send(key_view(row, now=utcnow()))


def key_view(row: ApiKey, *, now: datetime) -> KeyView:
    """Return a key as the API shows it."""
    return KeyView(
        id=row.id,
        name=row.name,
        prefix=f"{api_keys.KEY_PREFIX}{row.prefix}",
        is_admin=row.is_admin,
        status=api_keys.status_of(row, now=now),
        monthly_budget=row.monthly_budget,
        rpm=row.rpm,
        tpm=row.tpm,
        allowed_models=row.allowed_models,
        budget_windows=None if row.budget_windows is None else window_spans.validated(row.budget_windows),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _settings(fields: dict[str, Any]) -> dict[str, Any]:
    # Money is exact in the ledger: a JSON number becomes the Decimal of its shortest text, not of its binary value.
    if fields.get("monthly_budget") is not None:
        fields["monthly_budget"] = Decimal(str(fields["monthly_budget"]))
    if fields.get("budget_windows") is not None:
        fields["budget_windows"] = {name: Decimal(str(limit)) for name, limit in fields["budget_windows"].items()}
    return fields


def _known_models() -> list[str]:
    return current_app.extensions["catalog"].model_names
