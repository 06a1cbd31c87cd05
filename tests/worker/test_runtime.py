"""The worker's per-process set-up under gevent."""

from __future__ import annotations

import select
import socket
import sys
import time
import types

import httpcore2._utils as http_utils
import pytest
from celery import current_app
from gevent import monkey

from worker import celery_app
from worker import runtime
from worker import tasks


def test_pooled_connections_are_checked_with_the_native_poll_under_gevent(monkeypatch: pytest.MonkeyPatch) -> None:
    polls: list[object] = []

    def native_poll() -> object:
        polls.append("native")
        return select.poll()

    monkeypatch.setattr(monkey, "is_module_patched", lambda name: name == "select")
    monkeypatch.setattr(monkey, "get_original", lambda module, name: native_poll)
    monkeypatch.setattr(http_utils, "select", select)  # put back after the test

    runtime._native_readability_check()

    # The check still tells an idle pooled connection from one the server wrote to (or closed), natively.
    ours, server = socket.socketpair()
    with ours, server:
        assert http_utils.is_socket_readable(ours) is False
        server.send(b"x")
        assert http_utils.is_socket_readable(ours) is True
    assert polls == ["native", "native"]


def test_without_gevent_the_http_client_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monkey, "is_module_patched", lambda name: False)
    monkeypatch.setattr(http_utils, "select", select)

    runtime._native_readability_check()

    assert http_utils.select is select


def test_kombus_broker_retries_wait_cooperatively_under_gevent(monkeypatch: pytest.MonkeyPatch) -> None:
    # kombu bound the blocking sleep before gevent patched time: while Redis is down, its reconnection waits
    # would stop every job of the worker.
    def blocking_sleep(seconds: float) -> None:
        raise AssertionError("the blocking sleep was called")

    bound_early = types.ModuleType("kombu.bound_early")
    bound_early.sleep = blocking_sleep  # type: ignore[attr-defined]
    elsewhere = types.ModuleType("not_kombu")
    elsewhere.sleep = blocking_sleep  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kombu.bound_early", bound_early)
    monkeypatch.setitem(sys.modules, "not_kombu", elsewhere)
    monkeypatch.setattr(monkey, "is_module_patched", lambda name: name == "time")
    monkeypatch.setattr(monkey, "get_original", lambda module, name: blocking_sleep)

    celery_app._cooperative_broker_waits()

    assert bound_early.sleep is time.sleep  # type: ignore[attr-defined]
    # Only Celery's and kombu's modules are touched.
    assert elsewhere.sleep is blocking_sleep  # type: ignore[attr-defined]


def test_finished_jobs_send_their_callbacks_to_the_delivery_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime sends the task by its name (worker.tasks imports the runtime, not the other way round):
    # that name must be the one the delivery task is registered under.
    sent: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args: sent.append((name, args)))

    runtime._send_callback("job", "job-1")

    assert sent == [(tasks.deliver_callback.name, ["job", "job-1"])]
    assert tasks.deliver_alert.name == celery_app.ALERT_DELIVERY_TASK
