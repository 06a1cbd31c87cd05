"""The circuit state of every catalog model, for health and stats."""

from __future__ import annotations

import redis
from flask import current_app

from shared.store import redis_clients
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker


def circuit_states(client: redis.Redis | None = None) -> dict[str, str]:
    """Return the circuit state of each model, or of each of its deployments ("closed" when Redis cannot answer)."""
    settings = current_app.extensions["settings"]
    models = current_app.extensions["catalog"].upstream_keys
    owned = client is None
    client = client or redis_clients.fast_failing(settings.redis_url)
    try:
        return CircuitBreaker(client, BreakerPolicy.from_settings(settings)).states(models)
    finally:
        if owned:
            client.close()
