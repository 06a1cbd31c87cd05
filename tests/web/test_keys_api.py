"""API keys at the HTTP edge: 401s, scoping of jobs, budget and stats, and per-key rate limits."""

from __future__ import annotations

from decimal import Decimal

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.ledger import api_keys
from shared.store.models import ApiKey
from shared.store.session import make_sessionmaker


def _key(app: Flask, name: str, **options) -> tuple[int, str]:
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        row, key = api_keys.create(session, name=name, **options)
        return row.id, key


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(keyed_app: Flask) -> FlaskClient:
    return keyed_app.test_client()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer mr_nope"}],
    ids=["missing", "empty", "basic", "unknown"],
)
def test_requests_without_a_valid_key_get_401(client: FlaskClient, headers: dict[str, str]) -> None:
    for method, path in (("post", "/api/prompt"), ("get", "/api/budget"), ("get", "/api/stats")):
        response = getattr(client, method)(path, json={"prompt": "x", "wait": False}, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_and_docs_need_no_key(client: FlaskClient) -> None:
    assert client.get("/api/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_a_revoked_key_gets_401(client: FlaskClient, keyed_app: Flask) -> None:
    key_id, key = _key(keyed_app, "alice")
    assert client.get("/api/budget", headers=_auth(key)).status_code == 200
    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        api_keys.revoke(session, key_id_or_prefix=str(key_id))
    assert client.get("/api/budget", headers=_auth(key)).status_code == 401


def test_only_a_hash_and_prefix_are_stored(keyed_app: Flask) -> None:
    _, key = _key(keyed_app, "alice")
    with make_sessionmaker(keyed_app.extensions["db_engine"])() as session:
        row = session.scalars(select(ApiKey)).one()
        stored = [str(getattr(row, column.key)) for column in ApiKey.__table__.columns]
    # The secret part may itself contain "_" (URL-safe base64): split off only "mr_" and the prefix.
    secret = key.split("_", 2)[2]
    assert not any(key in value or secret in value for value in stored)
    assert row.key_hash == api_keys.hash_key(key)
    assert key.startswith(f"mr_{row.prefix}_")


def test_a_key_cannot_read_another_keys_job(client: FlaskClient, keyed_app: Flask) -> None:
    _, alice = _key(keyed_app, "alice")
    _, bob = _key(keyed_app, "bob")
    _, admin = _key(keyed_app, "ops", is_admin=True)
    job_id = client.post("/api/prompt", json={"prompt": "hi", "wait": False}, headers=_auth(alice)).get_json()["job_id"]
    assert client.get(f"/api/jobs/{job_id}", headers=_auth(alice)).status_code == 200
    other = client.get(f"/api/jobs/{job_id}", headers=_auth(bob))
    assert other.status_code == 404
    assert other.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/jobs/{job_id}", headers=_auth(admin)).status_code == 200


def test_a_key_sees_its_own_budget_and_an_admin_the_global_one(client: FlaskClient, keyed_app: Flask) -> None:
    alice_id, alice = _key(keyed_app, "alice", monthly_budget=Decimal("2"))
    _, admin = _key(keyed_app, "ops", is_admin=True)
    client.post("/api/prompt", json={"prompt": "hi", "wait": False}, headers=_auth(alice))
    own = client.get("/api/budget", headers=_auth(alice)).get_json()
    everything = client.get("/api/budget", headers=_auth(admin)).get_json()
    assert (own["scope"], own["monthly_limit"], own["request_count"]) == (f"key:{alice_id}", 2.0, 1)
    assert own["reserved"] > 0
    assert (everything["scope"], everything["monthly_limit"]) == ("global", 100.0)
    assert everything["reserved"] == own["reserved"]


def test_a_key_with_its_own_budget_is_refused_beyond_it(client: FlaskClient, keyed_app: Flask) -> None:
    _, alice = _key(keyed_app, "alice", monthly_budget=Decimal("0.01"))
    response = client.post("/api/prompt", json={"prompt": "hi", "wait": False}, headers=_auth(alice))
    assert response.status_code == 402
    assert response.get_json()["error"]["details"]["scope"].startswith("key:")
    global_view = client.get("/api/budget", headers=_auth(_key(keyed_app, "ops", is_admin=True)[1])).get_json()
    assert (global_view["reserved"], global_view["request_count"]) == (0.0, 0)


def test_a_key_sees_only_its_own_stats(client: FlaskClient, keyed_app: Flask) -> None:
    _, alice = _key(keyed_app, "alice")
    _, bob = _key(keyed_app, "bob")
    _, admin = _key(keyed_app, "ops", is_admin=True)
    for _ in range(2):
        client.post("/api/prompt", json={"prompt": "hi", "wait": False}, headers=_auth(alice))
    client.post("/api/prompt", json={"prompt": "hi", "wait": False}, headers=_auth(bob))
    assert client.get("/api/stats", headers=_auth(alice)).get_json()["total_requests"] == 2
    assert client.get("/api/stats", headers=_auth(bob)).get_json()["total_requests"] == 1
    assert client.get("/api/stats", headers=_auth(admin)).get_json()["total_requests"] == 3


def test_the_request_past_a_keys_rpm_gets_429_with_retry_after(client: FlaskClient, keyed_app: Flask) -> None:
    _, limited = _key(keyed_app, "batchy", rpm=3)
    _, other = _key(keyed_app, "other", rpm=3)
    statuses = [client.post("/api/estimate", json={"prompt": "hi"}, headers=_auth(limited)).status_code
                for _ in range(4)]  # fmt: skip
    assert statuses == [200, 200, 200, 429]
    refused = client.post("/api/estimate", json={"prompt": "hi"}, headers=_auth(limited))
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert client.post("/api/estimate", json={"prompt": "hi"}, headers=_auth(other)).status_code == 200
