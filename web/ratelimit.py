"""Per-key request rate limits, counted in Redis so that every web process shares them."""

from __future__ import annotations

from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import request
from flask_limiter import Limiter

from shared.config import Settings
from web.auth import current_identity


def _client_key() -> str:
    identity = current_identity()
    return f"key:{identity.api_key_id}" if identity is not None else f"addr:{request.remote_addr}"


def _rpm() -> int | None:
    identity = current_identity()
    if identity is not None and identity.rpm is not None:
        return identity.rpm
    return current_app.extensions["settings"].default_rpm


def _limit() -> str:
    # Flask-Limiter parses the limit before asking `exempt_when`; an exempt request still needs a valid one.
    return f"{_rpm() or 1}/minute"


def _exempt() -> bool:
    return _rpm() is None


def init_app(app: Flask, settings: Settings, blueprints: tuple[Blueprint, ...]) -> Limiter | None:
    """Limit `blueprints` to each key's requests per minute (its own `rpm`, else DEFAULT_RPM).

    Without API keys and without DEFAULT_RPM no limit can apply: no limiter then checks every request.
    """
    if not settings.api_keys_required and settings.default_rpm is None:
        return None
    limiter = Limiter(
        key_func=_client_key,
        storage_uri=settings.redis_url,
        strategy="fixed-window",
        headers_enabled=True,
        # Redis down must not turn every request into a 500: the broker check answers 503 where it matters.
        swallow_errors=True,
        key_prefix="model_router_rl",
    )
    for blueprint in blueprints:
        limiter.limit(_limit, exempt_when=_exempt)(blueprint)
    limiter.init_app(app)
    app.extensions["limiter"] = limiter
    return limiter
