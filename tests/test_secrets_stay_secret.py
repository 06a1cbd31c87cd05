"""Secrets never appear in output, logs, error texts, metrics or stored rows.

Every path that prints or logs runs here with secrets planted in every setting and URL that can hold one:
`model-router run`'s banner, the settings' repr, a submission with a callback, deliveries that fail (an error
status, a dead port, a refused address), an alert that fails, and requests with an admin API key.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask import Flask

from shared.cli import ops
from shared.jobs import runs
from shared.ledger import api_keys
from shared.observability import logs
from shared.store.base import Base
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from tests.support.webhook_receiver import receiver
from worker import runtime
from worker import tasks

DB_PASSWORD = "db-pass-91c"
REDIS_PASSWORD = "redis-pass-4b2"
OPENAI_KEY = "sk-upstream-77a"
BASE_PASSWORD = "base-pass-e3"
BASE_TOKEN = "base-q-5f"
WEBHOOK_SECRET = "hook-secret-0d"
URL_KEY = "S2V5IGZvciB0ZXN0cyBvbmx5IC0gMzIgYnl0ZXMhISE="
ALERT_SECRET = "alert-secret-c8"
ALERT_TOKEN = "alert-token-a1"
CALLBACK_PASSWORD = "cb-pass-3e"
CALLBACK_PATH = "cb-path-19"
CALLBACK_TOKEN = "cb-query-2c"

SECRETS = [
    DB_PASSWORD, REDIS_PASSWORD, OPENAI_KEY, BASE_PASSWORD, BASE_TOKEN, WEBHOOK_SECRET, URL_KEY, ALERT_SECRET,
    ALERT_TOKEN, CALLBACK_PASSWORD, CALLBACK_PATH, CALLBACK_TOKEN,
]  # fmt: skip

ENVIRONMENT = {
    "DATABASE_URL": f"postgresql://router:{DB_PASSWORD}@127.0.0.1:5432/router?sslmode=prefer",
    "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/3",
    "OPENAI_API_KEY": OPENAI_KEY,
    "OPENAI_BASE_URL": f"https://router:{BASE_PASSWORD}@llm.example.com/v1?api-key={BASE_TOKEN}",
    "WEBHOOK_SECRET": WEBHOOK_SECRET,
    "WEBHOOK_URL_KEYS": json.dumps([URL_KEY]),
    "ALERT_WEBHOOK_URL": f"https://alerts.example.com/hook?token={ALERT_TOKEN}",
    "ALERT_WEBHOOK_SECRET": ALERT_SECRET,
}


def assert_no_secret(text: str, *extra: str) -> None:
    leaked = [secret for secret in (*SECRETS, *extra) if secret in text]
    assert leaked == [], f"leaked {leaked} in: {text[:2000]}"


def test_the_run_banner_masks_every_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.devstack import localstack
    from shared.store import migrate

    monkeypatch.setattr(migrate, "upgrade", lambda *args, **kwargs: None)
    monkeypatch.setattr(localstack, "_redis_answers", lambda url: True)
    monkeypatch.setattr(localstack, "run_stack", lambda plan: 0)
    result = CliRunner().invoke(ops.run, env=ENVIRONMENT)
    assert result.exit_code == 0, result.output
    assert "Database: postgresql+psycopg://***@127.0.0.1:5432/router?sslmode=***" in result.output
    assert "Redis: using the server at redis://***@127.0.0.1:6379/3" in result.output
    assert_no_secret(result.output)


def test_the_settings_repr_masks_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    from shared.config import load_settings

    settings = load_settings()
    assert settings.database_url.endswith("/router?sslmode=prefer")  # the real value is still there to use
    assert_no_secret(repr(settings))
    assert_no_secret(str(settings))


@pytest.fixture
def app(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    from web.app import create_app

    settings = make_test_settings(
        f"sqlite:///{tmp_path}/router.db",
        openai_api_key=OPENAI_KEY,
        openai_base_url=f"http://router:{BASE_PASSWORD}@127.0.0.1:9/v1?api-key={BASE_TOKEN}",
        webhook_secret=WEBHOOK_SECRET,
        webhook_url_keys=[URL_KEY],
        webhook_allowed_hosts=["127.0.0.1"],
        webhook_retry_for_s=0,
        alert_webhook_secret=ALERT_SECRET,
        require_api_key=True,
        log_format="json",
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    Base.metadata.create_all(app.extensions["db_engine"])
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: None)
    monkeypatch.setattr(tasks.deliver_callback, "apply_async", lambda args, **_: None)
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture
def logged(app: Flask) -> Iterator[io.StringIO]:
    """Every line logged, as the service writes it (JSON), at DEBUG."""
    stream = io.StringIO()
    handler = logs.make_handler(app.extensions["settings"], stream=stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def _stored_text(app: Flask) -> str:
    """Every row of every table, as text."""
    with app.extensions["db_engine"].connect() as connection:
        return "\n".join(
            str(row) for table in Base.metadata.sorted_tables for row in connection.execute(sa.select(table))
        )


def test_submission_delivery_and_alerts_never_show_a_secret(app: Flask, catalog, logged: io.StringIO,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        _, admin_key = api_keys.create(session, name="ops", monthly_budget=None, rpm=None, is_admin=True)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {admin_key}"}
    answers: list[str] = []
    with receiver() as hooks:
        hooks.answers[f"/{CALLBACK_PATH}"] = (500, {})
        failing = f"http://user:{CALLBACK_PASSWORD}@127.0.0.1:{hooks.port}/{CALLBACK_PATH}?token={CALLBACK_TOKEN}"
        dead = f"http://127.0.0.1:1/{CALLBACK_PATH}?token={CALLBACK_TOKEN}"
        refused = f"http://hooks.invalid/{CALLBACK_PATH}?token={CALLBACK_TOKEN}"
        job_ids = []
        for url in (failing, dead, refused):
            response = client.post("/api/prompt", json={"prompt": "Hi", "wait": False, "callback_url": url},
                                   headers=auth)  # fmt: skip
            assert response.status_code == 202, response.get_json()
            answers.append(response.get_data(as_text=True))
            job_ids.append(response.get_json()["job_id"])
        batch = client.post("/api/batch", json={"prompts": ["Hi"], "callback_url": failing}, headers=auth)
        answers.append(batch.get_data(as_text=True))
        # A bad callback's 400 does not echo it either.
        bad = client.post("/api/prompt", json={"prompt": "Hi", "callback_url": f"http://10.0.0.1/?t={CALLBACK_TOKEN}"},
                          headers=auth)  # fmt: skip
        assert bad.status_code == 400
        answers.append(bad.get_data(as_text=True))

        deps = worker_deps(app, catalog, FakeLLMClient(), sleep=lambda _: None)
        monkeypatch.setattr(runtime, "get_deps", lambda: deps)
        for job_id in job_ids:
            runs.run(job_id, deps=deps)
            tasks.deliver_callback.apply(args=["job", job_id])
            answers.append(client.get(f"/api/jobs/{job_id}", headers=auth).get_data(as_text=True))
        assert [request.path for request in hooks.requests] == [f"/{CALLBACK_PATH}?token={CALLBACK_TOKEN}"]

        alerting = make_test_settings(app.extensions["settings"].database_url, webhook_allowed_hosts=["127.0.0.1"],
                                      alert_webhook_url=failing, alert_webhook_secret=ALERT_SECRET,
                                      alert_webhook_max_retries=0)  # fmt: skip
        monkeypatch.setattr(runtime, "get_deps", lambda: runs.RunDeps(
            sessions=deps.sessions, catalog=catalog, settings=alerting, client=deps.client))  # fmt: skip
        tasks.deliver_alert.apply(args=[{"event": "budget_threshold"}])
    answers.append(client.get("/metrics", headers=auth).get_data(as_text=True))

    text = logged.getvalue()
    assert "webhook for job" in text or "giving up on job" in text  # the failures were logged
    assert_no_secret(text, admin_key)
    assert_no_secret("\n".join(answers), admin_key)
    assert_no_secret(_stored_text(app), admin_key)
