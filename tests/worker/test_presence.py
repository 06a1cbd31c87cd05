"""Which workers the reaper takes for alive: a heartbeat key, or an answer to a ping when the key is gone."""

from __future__ import annotations

import types

import redis
from kombu.exceptions import OperationalError

from shared.store import heartbeats
from worker import presence


class Control:
    """Stands in for `app.control`: the named workers answer a ping; `broken`: the broker cannot be reached."""

    def __init__(self, *answering: str, broken: bool = False) -> None:
        self.answering = answering
        self.broken = broken
        self.asked: list[list[str]] = []

    def ping(self, *, destination: list[str], timeout: float) -> list[dict[str, dict[str, str]]]:
        self.asked.append(destination)
        if self.broken:
            raise OperationalError("broker unreachable")
        return [{name: {"ok": "pong"}} for name in destination if name in self.answering]


def _app(control: Control) -> types.SimpleNamespace:
    return types.SimpleNamespace(control=control)


def test_a_worker_with_a_key_is_alive_without_a_ping(real_redis: redis.Redis) -> None:
    heartbeats.Heartbeat(real_redis, worker="celery@a", interval_s=10).beat()
    control = Control()

    assert presence.find_alive(_app(control), real_redis, {"celery@a"}) == {"celery@a"}
    assert control.asked == []


def test_a_worker_whose_heartbeat_lags_but_answers_a_ping_is_alive(real_redis: redis.Redis) -> None:
    heartbeats.Heartbeat(real_redis, worker="celery@a", interval_s=10).beat()
    control = Control("celery@lagging")

    found = presence.find_alive(_app(control), real_redis, {"celery@a", "celery@lagging", "celery@dead"})

    assert found == {"celery@a", "celery@lagging"}
    assert control.asked == [["celery@dead", "celery@lagging"]]


def test_a_broker_that_cannot_be_asked_makes_nobody_dead(real_redis: redis.Redis) -> None:
    assert presence.find_alive(_app(Control(broken=True)), real_redis, {"celery@dead"}) is None


def test_a_redis_that_cannot_be_asked_makes_nobody_dead() -> None:
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)

    assert presence.find_alive(_app(Control()), unreachable, {"celery@dead"}) is None
