"""Rate limits on by default, per key and per address; failed authentication limited before the database."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from shared.config import Settings
from shared.config import load_settings
from shared.ledger import api_keys
from shared.store.base import Base
from shared.store.session import make_sessionmaker
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import make_test_settings

ESTIMATE = {"prompt": "hi"}


@pytest.fixture
def make_app(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """Build a keyed app on the unit Redis (emptied) with these settings; nothing is enqueued."""
    from web.app import create_app
    from worker import tasks

    built: list[Flask] = []
    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()

    def make(**overrides: object) -> Flask:
        settings = make_test_settings(f"sqlite:///{tmp_path}/limits.db", require_api_key=True, **overrides)
        app = create_app(settings)
        Base.metadata.create_all(app.extensions["db_engine"])
        monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: None)
        built.append(app)
        return app

    yield make
    for app in built:
        app.extensions["db_engine"].dispose()
    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()


def _key(app: Flask, name: str, **options: object) -> str:
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        return api_keys.create(session, name=name, **options)[1]


def _call(client: FlaskClient, key: str, path: str = "/api/estimate", address: str = "10.0.0.1") -> int:
    headers = {"Authorization": f"Bearer {key}"}
    environ = {"REMOTE_ADDR": address}
    if path == "/api/estimate":
        return client.post(path, json=ESTIMATE, headers=headers, environ_base=environ).status_code
    return client.get(path, headers=headers, environ_base=environ).status_code


def _key_lookups(app: Flask) -> list[str]:
    """Record every statement that reads the api_keys table from now on."""
    seen: list[str] = []

    def keep(conn, cursor, statement, parameters, context, executemany) -> None:
        if "FROM api_keys" in statement:
            seen.append(statement)

    event.listen(app.extensions["db_engine"], "before_cursor_execute", keep)
    return seen


def test_limits_are_on_by_default() -> None:
    settings = load_settings(openai_base_url="http://127.0.0.1:9/v1")
    assert (settings.default_rpm, settings.address_rpm, settings.auth_failures_per_minute) == (600, 1200, 20)
    assert Settings.model_fields["default_rpm"].default > 0


def test_a_key_without_its_own_rpm_gets_the_default_across_every_route(make_app) -> None:
    app = make_app(default_rpm=3)
    key, other = _key(app, "plain"), _key(app, "other")
    client = app.test_client()
    statuses = [_call(client, key), _call(client, key, "/api/budget"), _call(client, key, "/api/stats")]
    assert statuses == [200, 200, 200]
    refused = client.get("/api/jobs", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert _call(client, other) == 200  # another key counts on its own


def test_a_keys_own_rpm_overrides_the_default_and_zero_turns_the_default_off(make_app) -> None:
    app = make_app(default_rpm=0)
    unlimited, limited = _key(app, "unlimited"), _key(app, "limited", rpm=2)
    client = app.test_client()
    assert [_call(client, unlimited) for _ in range(10)] == [200] * 10
    assert [_call(client, limited) for _ in range(3)] == [200, 200, 429]


def test_one_address_is_limited_whatever_keys_it_sends(make_app) -> None:
    app = make_app(default_rpm=0, address_rpm=3)
    keys = [_key(app, f"k{n}") for n in range(4)]
    client = app.test_client()
    assert [_call(client, key) for key in keys] == [200, 200, 200, 429]
    assert _call(client, keys[3], address="10.0.0.2") == 200


def test_the_address_is_the_one_trusted_proxies_saw(make_app) -> None:
    app = make_app(default_rpm=0, address_rpm=1, trusted_proxies=1)
    key = _key(app, "k")
    client = app.test_client()

    def call(forwarded_for: str) -> int:
        headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": forwarded_for}
        return client.post("/api/estimate", json=ESTIMATE, headers=headers).status_code

    assert [call("203.0.113.7"), call("203.0.113.8"), call("203.0.113.7")] == [200, 200, 429]


def test_failed_authentications_past_the_limit_get_429_without_a_database_lookup(make_app) -> None:
    app = make_app(default_rpm=0, auth_failures_per_minute=3)
    good = _key(app, "good")
    client = app.test_client()
    wrong = [f"mr_0000000{n}_" + "x" * 43 for n in range(5)]  # well formed, unknown: each needs a lookup
    assert [_call(client, key) for key in wrong[:3]] == [401, 401, 401]

    lookups = _key_lookups(app)
    refused = client.post(
        "/api/estimate",
        json=ESTIMATE,
        headers={"Authorization": f"Bearer {wrong[3]}"},
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert _call(client, good) == 429  # the address is held off whatever it sends, until its minute ends
    assert lookups == []
    assert _call(client, good, address="10.0.0.2") == 200  # other addresses are not


@pytest.mark.parametrize(
    "authorization", ["", "Bearer nope", "Bearer mr_short", "Bearer " + "mr_" + "z" * 5000, "Basic dXNlcjpwdw=="]
)
def test_a_malformed_key_is_refused_without_a_database_lookup(make_app, authorization: str) -> None:
    app = make_app()
    lookups = _key_lookups(app)
    response = app.test_client().get("/api/budget", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert lookups == []


def test_an_unknown_key_sent_again_is_refused_without_another_lookup(make_app) -> None:
    app = make_app()
    lookups = _key_lookups(app)
    client = app.test_client()
    unknown = "mr_00000000_" + "y" * 43
    assert [_call(client, unknown) for _ in range(5)] == [401] * 5
    assert len(lookups) == 1


def test_a_revoked_key_stays_refused_and_a_live_key_is_looked_up_every_time(make_app) -> None:
    app = make_app()
    key = _key(app, "alice")
    client = app.test_client()
    lookups = _key_lookups(app)
    assert [_call(client, key) for _ in range(3)] == [200] * 3
    assert len(lookups) == 3  # never cached: a revocation takes effect at once
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        api_keys.revoke(session, key_id_or_prefix=key.split("_")[1])
    before = len(lookups)
    assert [_call(client, key) for _ in range(3)] == [401] * 3
    assert len(lookups) == before + 1


def test_refused_keys_are_forgotten_after_their_time_and_beyond_the_size() -> None:
    now = [0.0]
    refused = api_keys.RefusedKeys(max_size=2, ttl_s=10, clock=lambda: now[0])
    refused.add("a")
    refused.add("b")
    refused.add("c")
    assert ("a" in refused, "b" in refused, "c" in refused) == (False, True, True)
    now[0] = 10.0
    assert "b" not in refused and "c" not in refused
