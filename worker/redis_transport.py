"""kombu's Redis transport, keeping one redis-py client per connection pool instead of one per command.

kombu's Redis channel builds a new `redis.Redis` for each publish, each delivery it records and each
acknowledgement (`Channel.conn_or_acquire`). Building one copies redis-py's table of about 170 response
callbacks: a fifth of the CPU a publish costs. A client is only a handle on its connection pool and is safe
to share between threads and greenlets, so this channel keeps one per pool and builds another only when
kombu replaces the pool (after a disconnect). Everything else is kombu's transport as it is.
"""

from __future__ import annotations

import redis
from kombu.transport import redis as kombu_redis

# For `broker_transport`; kombu imports a transport named by its dotted path.
TRANSPORT = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    """A kombu Redis channel whose commands share one client per connection pool."""

    _shared: tuple[redis.ConnectionPool, redis.Redis] | None = None

    def _create_client(self, asynchronous: bool = False) -> redis.Redis:
        if asynchronous:
            # The event loop's own client (BRPOP, pub/sub): kombu already builds it once per channel.
            return super()._create_client(asynchronous=True)
        pool = self.pool
        shared = self._shared
        if shared is None or shared[0] is not pool:
            shared = (pool, super()._create_client())
            self._shared = shared
        return shared[1]


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the shared-client channel."""

    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """Return the transport for `broker_url`: this one for redis://, else None (kombu picks by scheme).

    rediss:// keeps kombu's own choice, which turns TLS on from the scheme; a transport named explicitly
    would not.
    """
    return TRANSPORT if broker_url.startswith("redis://") else None
