"""The broker's Redis transport shares one redis-py client per connection pool, and still moves messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.conftest import make_test_settings
from tests.support.chaos import PrivateRedis
from worker.celery_app import create_celery
from worker.redis_transport import TRANSPORT


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(work_dir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.close()


def app_for(tmp_path: Path, url: str) -> Celery:
    return create_celery(make_test_settings(f"sqlite:///{tmp_path}/router.db", redis_url=url))


def test_a_redis_broker_url_uses_the_shared_client_transport(tmp_path: Path, private_redis: PrivateRedis) -> None:
    with app_for(tmp_path, private_redis.url).connection_for_write() as connection:
        assert connection.transport_cls == TRANSPORT
        assert type(connection.default_channel).__module__ == "worker.redis_transport"


def test_a_tls_broker_url_keeps_kombus_transport_which_turns_tls_on(tmp_path: Path) -> None:
    with app_for(tmp_path, "rediss://127.0.0.1:6390/0").connection_for_write() as connection:
        assert connection.transport_cls == "rediss"


def test_commands_share_one_client_until_kombu_replaces_the_pool(tmp_path: Path, private_redis: PrivateRedis) -> None:
    with app_for(tmp_path, private_redis.url).connection_for_write() as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        # What kombu does after a lost connection: the next command gets a client on the new pool.
        channel._disconnect_pools()
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool


def test_published_messages_are_delivered_and_acknowledged(tmp_path: Path, private_redis: PrivateRedis) -> None:
    app = app_for(tmp_path, private_redis.url)
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("shared-client")
        for number in range(5):
            queue.put({"n": number})
        messages = [queue.get(timeout=2) for _ in range(5)]
        assert sorted(message.payload["n"] for message in messages) == list(range(5))
        admin = redis.Redis.from_url(private_redis.url)
        assert admin.hlen("unacked") == 5  # each delivery recorded, through the shared client
        for message in messages:
            message.ack()
        assert admin.hlen("unacked") == 0
        assert admin.zcard("unacked_index") == 0
        queue.close()
