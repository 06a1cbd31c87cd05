"""The circuit state of every catalog model, for health and stats."""

from __future__ import annotations

import redis
from flask import current_app

from shared.circuit import BreakerPolicy
from shared.circuit import CircuitBreaker


def circuit_states(client: redis.Redis | None = None) -> dict[str, str]:
    """Return each catalog model's circuit state ("closed" for all when Redis cannot be asked)."""
    settings = current_app.extensions["settings"]
    models = current_app.extensions["catalog"].model_names
    owned = client is None
    client = client or redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return CircuitBreaker(client, BreakerPolicy.from_settings(settings)).states(models)
    finally:
        if owned:
            client.close()
