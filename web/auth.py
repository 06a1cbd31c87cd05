"""Bearer API keys: who is calling, checked before every /api and /v1 route but health."""

from __future__ import annotations

from flask import Flask
from flask import current_app
from flask import g
from flask import request

from shared import api_keys
from shared.errors import NotFound
from shared.errors import Unauthorized
from web.db import get_session

OPEN_PATHS = ("/api/health",)


def init_app(app: Flask) -> None:
    """Authenticate API requests; registered before the rate limiter, which keys on the identity."""
    app.before_request(_authenticate)


def _authenticate() -> None:
    g.identity = None
    if not request.path.startswith(("/api/", "/v1/")) or request.path.startswith(OPEN_PATHS):
        return
    if not current_app.extensions["settings"].api_keys_required:
        return
    g.identity = authenticate_bearer()


def authenticate_bearer() -> api_keys.Identity:
    """Return the key sent as `Authorization: Bearer <key>`, or raise Unauthorized."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    session = get_session()
    identity = api_keys.authenticate(session, key=token.strip())
    # End the read here: the request's own write transaction must start with its write.
    session.rollback()
    if identity is None:
        raise Unauthorized("the API key is unknown or revoked")
    return identity


def current_identity() -> api_keys.Identity | None:
    """Return the caller's key, or None when keys are off."""
    return g.get("identity")


def sees_everything() -> bool:
    """Tell whether the caller sees global data: keys are off, or the key is an admin key."""
    identity = current_identity()
    return identity is None or identity.is_admin


def check_owner(api_key_id: int | None, *, what: str) -> None:
    """Raise NotFound unless the caller may see a resource owned by `api_key_id`."""
    identity = current_identity()
    if not sees_everything() and identity is not None and api_key_id != identity.api_key_id:
        raise NotFound(f"no {what}")
