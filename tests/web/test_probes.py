"""GET /livez and /readyz: the probes an orchestrator restarts and routes by."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from tests.conftest import make_test_settings

DOWN_REDIS_URL = "redis://127.0.0.1:1/0"
DOWN_DATABASE_URL = "postgresql://nobody@127.0.0.1:1/none"


def _app(database_url: str, **overrides: object) -> Iterator[Flask]:
    from web.app import create_app

    app = create_app(make_test_settings(database_url, **overrides))
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture
def redis_down_app(tmp_path) -> Iterator[Flask]:
    yield from _app(f"sqlite:///{tmp_path}/probes.db", redis_url=DOWN_REDIS_URL)


@pytest.fixture
def database_down_app() -> Iterator[Flask]:
    yield from _app(DOWN_DATABASE_URL)


def test_liveness_is_ok_with_database_and_broker(client: FlaskClient) -> None:
    response = client.get("/livez")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readiness_is_ok_with_database_and_broker(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_liveness_stays_ok_while_redis_is_down(redis_down_app: Flask) -> None:
    assert redis_down_app.test_client().get("/livez").status_code == 200


def test_readiness_names_a_down_redis(redis_down_app: Flask) -> None:
    response = redis_down_app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "checks": {"database": "ok", "broker": "unreachable"}}


def test_liveness_stays_ok_while_the_database_is_down(database_down_app: Flask) -> None:
    assert database_down_app.test_client().get("/livez").status_code == 200


def test_readiness_names_a_down_database(database_down_app: Flask) -> None:
    response = database_down_app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "unreachable", "broker": "ok"}


def test_liveness_touches_neither_database_nor_redis(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("/livez must not reach the database or Redis")

    monkeypatch.setattr(Engine, "connect", refuse)
    monkeypatch.setattr(redis.Redis, "execute_command", refuse)
    assert app.test_client().get("/livez").status_code == 200


def test_probes_need_no_key_and_are_not_rate_limited(keyed_app: Flask) -> None:
    client = keyed_app.test_client()
    for path in ("/livez", "/readyz"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_json())
        assert "X-RateLimit-Limit" not in response.headers
