"""Listening to a Redis server's channels as any of its clients could."""

from __future__ import annotations

import redis


class Eavesdropper:
    """A pattern subscription to every channel of the server, as any client of the broker could open."""

    def __init__(self, url: str) -> None:
        self._pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*")
        self._pubsub.get_message(timeout=1.0)  # the confirmation

    def heard(self) -> list[tuple[bytes, bytes]]:
        """Return the (channel, data) of every message published since, after a moment for stragglers."""
        messages = []
        while (message := self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)) is not None:
            messages.append((message["channel"], message["data"]))
        return messages

    def close(self) -> None:
        self._pubsub.close()
