"""Which jobs the broker holds a message for, read from kombu's Redis lists and its unacked hash."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.conftest import UNIT_REDIS_URL
from tests.conftest import make_test_settings
from worker.broker_messages import job_messages
from worker.celery_app import BATCH_QUEUE
from worker.celery_app import PROMPTS_QUEUE
from worker.celery_app import create_celery

QUEUES = (PROMPTS_QUEUE, BATCH_QUEUE)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celery]:
    client = redis.Redis.from_url(UNIT_REDIS_URL)
    client.flushdb()
    yield create_celery(make_test_settings(f"sqlite:///{tmp_path}/router.db"))
    client.flushdb()
    client.close()


def test_waiting_and_delivered_job_messages_are_found(app: Celery) -> None:
    app.send_task("jobs.run", args=["waiting-prompt"], queue=PROMPTS_QUEUE)
    app.send_task("jobs.run", args=["waiting-batch"], queue=BATCH_QUEUE, priority=5)
    app.send_task("jobs.run", args=["delivered"], queue=BATCH_QUEUE)
    app.send_task("alerts.deliver", args=[{"not": "a job"}], queue=PROMPTS_QUEUE)
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        # Delivered to a consumer and not acknowledged, as a worker holds a prefetched or running job's message
        # (the oldest message of the batch queue's default priority list).
        message = channel.basic_get(BATCH_QUEUE, no_ack=False)
        assert message.payload[0] == ["delivered"]

        held = job_messages(app, queues=QUEUES)

        assert held.waiting == {"waiting-prompt", "waiting-batch"}
        assert held.delivered == {"delivered"}
        channel.basic_ack(message.delivery_tag)
    assert job_messages(app, queues=QUEUES).delivered == frozenset()


def test_a_delivered_message_left_unrestored_past_twice_its_visibility_timeout_counts_as_gone(app: Celery) -> None:
    app.send_task("jobs.run", args=["taken-by-a-dead-worker"], queue=PROMPTS_QUEUE)
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        message = channel.basic_get(PROMPTS_QUEUE, no_ack=False)
        assert message.payload[0] == ["taken-by-a-dead-worker"]
        visibility = channel.visibility_timeout
        soon = job_messages(app, queues=QUEUES, now=time.time() + visibility)
        late = job_messages(app, queues=QUEUES, now=time.time() + 2 * visibility + 1)
        channel.basic_ack(message.delivery_tag)
    assert soon.delivered == {"taken-by-a-dead-worker"}  # kombu restores it itself after the visibility timeout
    assert late.delivered == frozenset()  # it did not: the reaper sends it again
