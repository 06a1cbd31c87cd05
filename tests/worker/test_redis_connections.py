"""A wave of jobs in flight must not run a process out of Redis connections (broker acks, cache, breakers,
stream reads)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.store import redis_clients
from tests.conftest import make_test_settings
from tests.support.chaos import PrivateRedis
from web.api import chat
from web.app import create_app
from worker.celery_app import create_celery

IN_FLIGHT = 40  # jobs finishing together; well under the default worker concurrency (256)
CACHE_READS = 150  # more than redis-py's default pool of 100, fewer than the requests a web process holds
PAUSE_MS = 250


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(work_dir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


def stall(url: str) -> None:
    """Hold every client's commands for PAUSE_MS: what starts now overlaps, each on a connection of its own."""
    with redis.Redis.from_url(url) as admin:
        admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")


def all_at_once(url: str, calls: list[Callable[[], object]]) -> list[BaseException]:
    """Make every call from a thread of its own while Redis stalls; return what they raised.

    Each call then waits on the server, so each holds a pooled connection at the same time, as the greenlets of
    a gevent process do when a wave of jobs finishes.
    """
    start = threading.Barrier(len(calls), action=lambda: stall(url))
    errors: list[BaseException] = []

    def call(make: Callable[[], object]) -> None:
        start.wait()
        try:
            make()
        except Exception as error:  # collected and asserted on
            errors.append(error)

    threads = [threading.Thread(target=call, args=(make,)) for make in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return errors


def ack_together(tmp_path: Path, url: str, **overrides: object) -> list[BaseException]:
    """Deliver IN_FLIGHT messages, then ack them all at once while Redis stalls; return the acks' errors."""
    app = create_celery(make_test_settings(f"sqlite:///{tmp_path}/router.db", redis_url=url, **overrides))
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("acks-under-load")
        for number in range(IN_FLIGHT):
            queue.put({"n": number})
        messages = [queue.get(timeout=2) for _ in range(IN_FLIGHT)]
        errors = all_at_once(url, [message.ack for message in messages])
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
    errors = ack_together(tmp_path, private_redis.url, redis_max_connections=10)
    assert errors
    assert all("Too many connections" in str(error) for error in errors)


def read_together(client: redis.Redis, url: str, readers: int) -> list[BaseException]:
    """Run `readers` GETs at once while Redis stalls, as a web process's requests look up the cache."""
    errors = all_at_once(url, [lambda: client.get("model-router:cache:absent")] * readers)
    client.close()
    return errors


def test_the_cache_and_breaker_client_serves_more_readers_at_once_than_redis_pys_default(
    private_redis: PrivateRedis,
) -> None:
    assert read_together(redis_clients.fast_failing(private_redis.url), private_redis.url, CACHE_READS) == []


def test_at_redis_pys_default_pool_the_same_readers_fail(private_redis: PrivateRedis) -> None:
    plain = redis.Redis.from_url(private_redis.url, socket_timeout=2)
    errors = read_together(plain, private_redis.url, CACHE_READS)
    assert errors
    assert all(isinstance(error, redis.exceptions.MaxConnectionsError) for error in errors)


def test_the_stream_reader_serves_more_readers_at_once_than_redis_pys_default(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    # Each streaming request blocks on XREAD with the web process's one stream client.
    app = create_app(make_test_settings(f"sqlite:///{tmp_path}/router.db", redis_url=private_redis.url))
    try:
        with app.app_context():
            client = chat._stream_reader().client
        assert read_together(client, private_redis.url, CACHE_READS) == []
    finally:
        app.extensions["db_engine"].dispose()
