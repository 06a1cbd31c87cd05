"""Rate limits per API key and per client address, counted in Redis so that every web process shares them.

Each request counts against two limits, each across every metered route: its key's (the key's own `rpm`, else
DEFAULT_RPM; without keys, its address's DEFAULT_RPM) and its address's (ADDRESS_RPM, whatever key it sends).
A limit of 0 is off. Failed authentication has a limit of its own (web.auth), checked before any of these.

A key with a `tpm` is also limited in tokens per minute (shared.ledger.token_rate): counted when a job is accepted
(`take_tokens`, from web.submission), not per route, since only then is the request's bound known.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import request
from flask_limiter import Limiter

from shared.config import Settings
from shared.jobs import lifecycle
from shared.ledger import call_bound
from shared.ledger import token_rate
from shared.store import redis_clients
from web.auth import current_identity

KEY_PREFIX = "model_router_rl"


def _client_key() -> str:
    identity = current_identity()
    return f"key:{identity.api_key_id}" if identity is not None else f"addr:{request.remote_addr}"


def _address() -> str:
    return f"addr:{request.remote_addr}"


def _key_rpm() -> int:
    identity = current_identity()
    if identity is not None and identity.rpm is not None:
        return identity.rpm
    return current_app.extensions["settings"].default_rpm


def _address_rpm() -> int:
    return current_app.extensions["settings"].address_rpm


def _per_minute(rpm: int) -> str:
    # Flask-Limiter parses the limit before asking `exempt_when`; an exempt request still needs a valid one.
    return f"{rpm or 1}/minute"


def take_tokens(job_id: str, request: lifecycle.JobRequest) -> None:
    """Count the job's bound in its key's tokens-per-minute window, or raise TokenRateExceeded (429)."""
    identity = current_identity()
    windows: token_rate.TokenWindows | None = current_app.extensions.get("token_windows")
    if identity is None or identity.tpm is None or windows is None:
        return
    bound = call_bound.call_bound(
        prompt=request.prompt, max_tokens=request.max_tokens, messages=request.messages, options=request.options
    )
    windows.take(api_key_id=identity.api_key_id, job_id=job_id, tokens=token_rate.tokens_of(bound), limit=identity.tpm)


def give_back_tokens(job_id: str) -> None:
    """Uncount a job refused after take_tokens counted it."""
    windows: token_rate.TokenWindows | None = current_app.extensions.get("token_windows")
    if windows is not None:
        windows.give_back(job_id)


def init_app(app: Flask, settings: Settings, blueprints: tuple[Blueprint, ...]) -> Limiter | None:
    """Limit `blueprints` per key and per address; with every limit off, no limiter checks any request."""
    if settings.api_keys_required:
        # Fails fast, like the limiter's own client: a down Redis must not hold a request up.
        app.extensions["token_windows"] = token_rate.TokenWindows(redis_clients.fast_failing(settings.redis_url))
    if not settings.default_rpm and not settings.address_rpm and not settings.api_keys_required:
        return None  # no key can carry an rpm of its own either
    limiter = Limiter(
        key_func=_client_key,
        storage_uri=settings.redis_url,
        strategy="fixed-window",
        headers_enabled=True,
        # Redis down must not turn every request into a 500: the broker check answers 503 where it matters.
        swallow_errors=True,
        key_prefix=KEY_PREFIX,
    )
    # Shared scopes: one count per key and one per address across every route, not one per blueprint.
    per_key = limiter.shared_limit(
        lambda: _per_minute(_key_rpm()), scope="key", key_func=_client_key, exempt_when=lambda: not _key_rpm()
    )
    per_address = limiter.shared_limit(
        lambda: _per_minute(_address_rpm()),
        scope="address",
        key_func=_address,
        exempt_when=lambda: not _address_rpm(),
    )
    for blueprint in blueprints:
        per_key(blueprint)
        per_address(blueprint)
    limiter.init_app(app)
    app.extensions["limiter"] = limiter
    return limiter
