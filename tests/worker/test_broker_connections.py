"""A burst of late acknowledgements, one per job in flight, must not run out of broker connections."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import make_test_settings
from tests.support.chaos import PrivateRedis
from worker.celery_app import create_celery

IN_FLIGHT = 40  # jobs finishing together; well under the default worker concurrency (256)
PAUSE_MS = 400


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(work_dir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


def ack_together(tmp_path: Path, url: str, **overrides: object) -> list[BaseException]:
    """Deliver IN_FLIGHT messages, then ack them all at once while Redis stalls; return the acks' errors."""
    app = create_celery(make_test_settings(f"sqlite:///{tmp_path}/router.db", redis_url=url, **overrides))
    errors: list[BaseException] = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("acks-under-load")
        for number in range(IN_FLIGHT):
            queue.put({"n": number})
        messages = [queue.get(timeout=2) for _ in range(IN_FLIGHT)]
        # Every ack now waits on the server, so each one holds a pooled connection at the same time, as the
        # greenlets of a gevent worker do when a wave of jobs finishes.
        redis.Redis.from_url(url).execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        start = threading.Barrier(IN_FLIGHT)

        def ack(message: object) -> None:
            start.wait()
            try:
                message.ack()  # type: ignore[attr-defined]
            except Exception as error:  # collected and asserted on
                errors.append(error)

        threads = [threading.Thread(target=ack, args=(message,)) for message in messages]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        queue.close()
    return errors


def test_a_wave_of_acks_needs_no_more_connections_than_the_broker_channel_may_open(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    assert ack_together(tmp_path, private_redis.url) == []
    unacked = redis.Redis.from_url(private_redis.url).hlen("unacked")
    assert unacked == 0


def test_the_same_wave_fails_at_kombus_default_of_ten_connections(private_redis: PrivateRedis, tmp_path: Path) -> None:
    # The failure the setting prevents, shown on the same wave: a worker sized like this drops acks.
    errors = ack_together(tmp_path, private_redis.url, broker_max_connections=10)
    assert errors
    assert all("Too many connections" in str(error) for error in errors)
