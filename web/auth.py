"""Bearer API keys: who is calling, checked before every /api and /v1 route but health.

Failed authentication is limited per client address (AUTH_FAILURES_PER_MINUTE, counted in Redis so that every
web process shares the count): past it the address is answered 429 until its minute ends, before any database
lookup. A malformed key never reaches the database, and a refused one is remembered (api_keys.RefusedKeys).
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Flask
from flask import current_app
from flask import g
from flask import request
from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from shared.config import Settings
from shared.errors import NotFound
from shared.errors import Unauthorized
from shared.ledger import api_keys
from web.db import get_session

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/api/health",)
FAILURES_NAMESPACE = "MODEL_ROUTER_AUTH_FAILURES"


class FailedAuthentications:
    """Counts each client address's failed authentications per minute and tells when it has had its share."""

    def __init__(self, redis_url: str, per_minute: int) -> None:
        self._limit = RateLimitItemPerMinute(per_minute, namespace=FAILURES_NAMESPACE)
        self._counter = FixedWindowRateLimiter(storage_from_string(redis_url))

    def seconds_blocked(self, address: str) -> int | None:
        """Return how long `address` must wait, or None if it may try; an unreachable Redis lets it try."""
        try:
            if self._counter.test(self._limit, address):
                return None
            reset_at = self._counter.get_window_stats(self._limit, address).reset_time
        except redis.RedisError:
            logger.warning("authentication failures cannot be counted: Redis is unreachable")
            return None
        return max(1, math.ceil(reset_at - time.time()))

    def record(self, address: str) -> None:
        try:
            self._counter.hit(self._limit, address)
        except redis.RedisError:
            logger.warning("authentication failures cannot be counted: Redis is unreachable")


def init_app(app: Flask, settings: Settings) -> None:
    """Authenticate API requests; registered before the rate limiter, which keys on the identity."""
    app.extensions["refused_keys"] = api_keys.RefusedKeys()
    if settings.api_keys_required and settings.auth_failures_per_minute:
        app.extensions["auth_failures"] = FailedAuthentications(settings.redis_url, settings.auth_failures_per_minute)
    app.before_request(_authenticate)


def _authenticate() -> None:
    g.identity = None
    if not request.path.startswith(("/api/", "/v1/")) or request.path.startswith(OPEN_PATHS):
        return
    if not current_app.extensions["settings"].api_keys_required:
        return
    g.identity = authenticate_bearer()


def authenticate_bearer() -> api_keys.Identity:
    """Return the key sent as `Authorization: Bearer <key>`, or raise Unauthorized (429 after too many)."""
    failures: FailedAuthentications | None = current_app.extensions.get("auth_failures")
    address = request.remote_addr or ""
    if failures is not None:
        wait_s = failures.seconds_blocked(address)
        if wait_s is not None:
            raise TooManyRequests("too many failed authentications from this address", retry_after=wait_s)
    try:
        return _identity()
    except Unauthorized:
        if failures is not None:
            failures.record(address)
        raise


def _identity() -> api_keys.Identity:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    session = get_session()
    identity = api_keys.authenticate(session, key=token.strip(), refused=current_app.extensions["refused_keys"])
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
