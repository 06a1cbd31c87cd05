"""The web tier's side of the response cache: which requests it may answer, and looking their answers up."""

from __future__ import annotations

import redis
from flask import current_app

from shared.jobs import lifecycle
from shared.jobs import response_cache
from shared.store import redis_clients
from web.auth import current_identity


def key_for(request: lifecycle.JobRequest, *, wanted: bool) -> str | None:
    """Return the request's cache key, or None when the cache must neither answer it nor keep its answer.

    `wanted` is the request's own `cache` field: false bypasses the cache both ways.
    """
    settings = current_app.extensions["settings"]
    if not wanted or not response_cache.is_cacheable(request, settings=settings):
        return None
    identity = current_identity()
    scope = response_cache.scope_of(
        None if identity is None else identity.api_key_id, shared=settings.response_cache_shared
    )
    estimator = request.difficulty_estimator or settings.difficulty_estimator
    routing = current_app.extensions.get("cache_routing")
    if routing is None:
        routing = response_cache.routing_fingerprint(current_app.extensions["catalog"], settings)
        current_app.extensions["cache_routing"] = routing
    return response_cache.key_for(request, scope=scope, difficulty_estimator=estimator, routing=routing)


def lookup(key: str) -> response_cache.Answer | None:
    """Return the answer cached under `key`, or None (a miss, or a cache that cannot be reached)."""
    return response_cache.get(_client(), key)


def _client() -> redis.Redis:
    """Return this process's cache client, made on first use (after gunicorn forks); it gives up at once."""
    client = current_app.extensions.get("cache_redis")
    if client is None:
        settings = current_app.extensions["settings"]
        client = redis_clients.fast_failing(settings.redis_url, max_connections=settings.redis_max_connections)
        current_app.extensions["cache_redis"] = client
    return client
