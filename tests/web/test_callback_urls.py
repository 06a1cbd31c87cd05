"""callback_url from submission to delivery: refused unless public or allowed, stored encrypted, delivered on the
checked address, recorded and logged masked."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import select

from shared.jobs import runs
from shared.jobs import webhooks
from shared.security import sealing
from shared.store.base import Base
from shared.store.models import Batch
from shared.store.models import RequestLog
from shared.store.models import WebhookDelivery
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from tests.conftest import worker_deps
from tests.shared.security.test_egress import HOSTILE_URLS
from tests.support.fakes import FakeLLMClient
from tests.support.webhook_receiver import FakeDNS
from tests.support.webhook_receiver import Receiver
from tests.support.webhook_receiver import receiver
from worker import runtime
from worker import tasks

SECRET = "signing-secret"
TOKEN = "q-token-2f9c"
PATH_TOKEN = "p-token-7d1e"


@pytest.fixture
def make_app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    from web.app import create_app

    made: list[Flask] = []

    def make(**overrides: object) -> Flask:
        app = create_app(make_test_settings(database_url, webhook_secret=SECRET, **overrides))
        app.config["TESTING"] = True
        if not made:
            Base.metadata.drop_all(app.extensions["db_engine"])
            Base.metadata.create_all(app.extensions["db_engine"])
        monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: None)
        monkeypatch.setattr(tasks.deliver_callback, "apply_async", lambda args, **_: None)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["db_engine"].dispose()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    monkeypatch.setattr(socket, "getaddrinfo", fake.getaddrinfo)
    return fake


def _stored(app: Flask) -> list[str | None]:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return [*session.scalars(select(RequestLog.callback_url)), *session.scalars(select(Batch.callback_url))]


def test_a_hostile_callback_url_is_a_400_naming_the_field(make_app) -> None:
    client = make_app().test_client()
    for url in HOSTILE_URLS:
        for path, body in (("/api/prompt", {"prompt": "x", "wait": False}), ("/api/batch", {"prompts": ["x"]})):
            response = client.post(path, json={**body, "callback_url": url})
            assert response.status_code == 400, (path, url)
            error = response.get_json()["error"]
            assert (error["code"], error["details"]) == ("invalid_request", {"field": "callback_url"})
            assert "callback_url" in error["message"]
    assert _stored(client.application) == []


def test_an_allowed_host_passes(make_app) -> None:
    client = make_app(webhook_allowed_hosts=["127.0.0.1", "hooks.internal"]).test_client()
    for url in ("http://127.0.0.1:9/hook", "http://hooks.internal/x"):
        assert client.post("/api/prompt", json={"prompt": "x", "wait": False, "callback_url": url}).status_code == 202
        assert client.post("/api/batch", json={"prompts": ["x"], "callback_url": url}).status_code == 202


def test_callback_urls_are_stored_encrypted(make_app) -> None:
    app = make_app()
    client = app.test_client()
    url = f"https://hooks.example.com/services/{PATH_TOKEN}?token={TOKEN}"
    job = client.post("/api/prompt", json={"prompt": "x", "wait": False, "callback_url": url}).get_json()
    batch = client.post("/api/batch", json={"prompts": ["x"], "callback_url": url}).get_json()
    stored = [value for value in _stored(app) if value is not None]
    assert len(stored) == 2
    sealer = sealing.require(app.extensions["settings"])
    for value in stored:
        assert "hooks.example.com" not in value and TOKEN not in value and PATH_TOKEN not in value
        assert sealer.open(value) == url
    for body in (client.get(f"/api/jobs/{job['job_id']}").get_json(), client.get(batch["poll_url"]).get_json()):
        assert TOKEN not in json.dumps(body) and PATH_TOKEN not in json.dumps(body)


def test_keys_can_be_rotated(make_app) -> None:
    old, new = (sealing.Sealer([key]) for key in (b"0" * 43 + b"=", b"1" * 43 + b"="))
    keys = [(b"1" * 43 + b"=").decode(), (b"0" * 43 + b"=").decode()]
    app = make_app(webhook_url_keys=keys)
    sealer = sealing.require(app.extensions["settings"])
    assert sealer.open(old.seal("https://a.example/")) == "https://a.example/"
    assert new.open(sealer.seal("https://b.example/")) == "https://b.example/"


# --- Delivery ------------------------------------------------------------------------------------------------


def _finished_job_with_callback(app: Flask, catalog, url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    client = app.test_client()
    response = client.post("/api/prompt", json={"prompt": "Hi", "wait": False, "callback_url": url})
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["job_id"]
    deps = worker_deps(app, catalog, FakeLLMClient(), sleep=lambda _: None)
    runs.run(job_id, deps=deps)
    monkeypatch.setattr(runtime, "get_deps", lambda: deps)
    return job_id


def _deliveries(app: Flask) -> list[WebhookDelivery]:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as record:
        yield record


def test_a_callback_is_delivered_signed_on_the_checked_address(
    make_app, catalog, hooks: Receiver, dns: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(webhook_allowed_hosts=["127.0.0.0/8"])
    dns.answer("hooks.example.com", ["127.0.0.1"])
    url = f"http://hooks.example.com:{hooks.port}/services/{PATH_TOKEN}?token={TOKEN}"
    job_id = _finished_job_with_callback(app, catalog, url, monkeypatch)
    assert tasks.deliver_callback.apply(args=["job", job_id]).result == 204
    [request] = hooks.requests
    assert request.path == f"/services/{PATH_TOKEN}?token={TOKEN}"
    assert request.headers["Host"] == f"hooks.example.com:{hooks.port}"
    assert request.headers[webhooks.SIGNATURE_HEADER] == webhooks.sign(request.body, SECRET)
    assert json.loads(request.body)["job_id"] == job_id
    [delivery] = _deliveries(app)
    assert delivery.delivered and delivery.url == f"http://hooks.example.com:{hooks.port}/…?token=***"


def test_a_name_that_resolves_privately_is_not_contacted_at_delivery(
    make_app, catalog, hooks: Receiver, dns: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    dns.answer("hooks.example.com", ["93.184.215.14"], ["127.0.0.1"])  # public at submission, loopback after
    job_id = _finished_job_with_callback(app, catalog, f"http://hooks.example.com:{hooks.port}/hook", monkeypatch)
    dns.answer("hooks.example.com", ["127.0.0.1"])
    assert tasks.deliver_callback.apply(args=["job", job_id]).result is None
    assert hooks.requests == []
    [delivery] = _deliveries(app)  # refused once, not retried
    assert not delivery.delivered and delivery.error.startswith("refused:")


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    make_app, catalog, hooks: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(webhook_allowed_hosts=["127.0.0.1"], webhook_retry_for_s=0)
    hooks.answers["/hook"] = (307, {"Location": f"http://127.0.0.1:{hooks.port}/elsewhere"})
    job_id = _finished_job_with_callback(app, catalog, f"http://127.0.0.1:{hooks.port}/hook", monkeypatch)
    tasks.deliver_callback.apply(args=["job", job_id])
    assert [request.path for request in hooks.requests] == ["/hook"]
    [delivery] = _deliveries(app)
    assert (delivery.status_code, delivery.error, delivery.delivered) == (307, "HTTP 307", False)
