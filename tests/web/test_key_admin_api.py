"""/api/keys: keys managed over HTTP by an admin key; expiry, allowed models and tokens per minute at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.errors import TransientLLMError
from shared.ledger import api_keys
from shared.ledger import token_rate
from shared.routing.catalog import Catalog
from shared.store import completion_channel
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from shared.store.types import utcnow
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import run_jobs_soon
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from tests.support.prompts import HARD


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(keyed_app: Flask) -> FlaskClient:
    # One fixed minute: tokens counted by one request are still there for the next, whatever the clock says.
    fixed = 60.0 * 1_000_000 + 10
    keyed_app.extensions["token_windows"] = token_rate.TokenWindows(
        redis.Redis.from_url(UNIT_REDIS_URL), clock=lambda: fixed
    )
    return keyed_app.test_client()


@pytest.fixture
def admin(keyed_app: Flask) -> dict[str, str]:
    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        return _auth(api_keys.create(session, name="ops", is_admin=True)[1])


def _create(client: FlaskClient, admin: dict[str, str], **fields: object) -> dict:
    response = client.post("/api/keys", json={"name": "alice", **fields}, headers=admin)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_a_plain_key_may_not_manage_keys(client: FlaskClient, admin: dict[str, str]) -> None:
    plain = _auth(_create(client, admin)["key"])
    for method, path in (("get", "/api/keys"), ("post", "/api/keys"), ("delete", "/api/keys/1")):
        response = getattr(client, method)(path, json={"name": "mallory", "is_admin": True}, headers=plain)
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "forbidden"


def test_a_created_key_is_shown_once_and_works(client: FlaskClient, admin: dict[str, str]) -> None:
    created = _create(client, admin, monthly_budget=2.5, rpm=30, tpm=5000)
    assert created["key"].startswith(created["prefix"] + "_")
    assert (created["monthly_budget"], created["rpm"], created["tpm"], created["status"]) == (2.5, 30, 5000, "active")
    assert client.get("/api/budget", headers=_auth(created["key"])).get_json()["monthly_limit"] == 2.5
    listed = client.get("/api/keys", headers=admin).get_json()["keys"]
    assert [key["name"] for key in listed] == ["ops", "alice"]
    assert all("key" not in key for key in listed)
    assert created["key"] not in client.get(f"/api/keys/{created['id']}", headers=admin).get_data(as_text=True)


def test_changing_a_key_changes_only_what_is_sent(client: FlaskClient, admin: dict[str, str]) -> None:
    created = _create(client, admin, rpm=30, tpm=5000)
    changed = client.patch(f"/api/keys/{created['id']}", json={"tpm": None, "monthly_budget": 1}, headers=admin)
    assert changed.status_code == 200
    body = changed.get_json()
    assert (body["rpm"], body["tpm"], body["monthly_budget"]) == (30, None, 1.0)
    assert client.get("/api/budget", headers=_auth(created["key"])).get_json()["monthly_limit"] == 1.0


@pytest.mark.parametrize(
    "fields",
    [
        {"rpm": 0},
        {"tpm": -1},
        {"allowed_models": ["no-such-model"]},
        {"allowed_models": []},
        {"surprise": 1},
        {"budget_windows": {"month": 1}},
        {"budget_windows": {"40d": 1}},
        {"budget_windows": {"day": -1}},
        {"budget_windows": {"day": "1"}},
    ],
    ids=[
        "rpm",
        "tpm",
        "unknown-model",
        "no-model",
        "unknown-field",
        "window-name",
        "window-too-long",
        "window-negative",
        "window-text",
    ],
)
def test_bad_settings_are_400(client: FlaskClient, admin: dict[str, str], fields: dict) -> None:
    response = client.post("/api/keys", json={"name": "alice", **fields}, headers=admin)
    assert response.status_code == 400
    # The field, or the path to the bad part of it.
    assert response.get_json()["error"]["details"]["field"].split(".")[0] == next(iter(fields))


def test_a_revoked_key_is_refused_and_cannot_change(client: FlaskClient, admin: dict[str, str]) -> None:
    created = _create(client, admin)
    revoked = client.delete(f"/api/keys/{created['id']}", headers=admin)
    assert revoked.get_json()["status"] == "revoked"
    assert client.get("/api/budget", headers=_auth(created["key"])).status_code == 401
    assert client.patch(f"/api/keys/{created['id']}", json={"rpm": 5}, headers=admin).status_code == 400
    assert client.delete("/api/keys/999", headers=admin).status_code == 404


def test_an_expired_key_is_refused_until_its_expiry_moves(client: FlaskClient, admin: dict[str, str]) -> None:
    created = _create(client, admin, expires_at=(utcnow() - timedelta(seconds=1)).isoformat())
    assert created["status"] == "expired"
    refused = client.get("/api/budget", headers=_auth(created["key"]))
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "unauthorized"
    later = (utcnow() + timedelta(days=1)).replace(tzinfo=None).isoformat()  # no zone: read as UTC
    assert client.patch(f"/api/keys/{created['id']}", json={"expires_at": later}, headers=admin).status_code == 200
    assert client.get("/api/budget", headers=_auth(created["key"])).status_code == 200


def test_a_key_is_refused_a_model_it_may_not_use(client: FlaskClient, admin: dict[str, str]) -> None:
    key = _auth(_create(client, admin, allowed_models=["gpt-3.5-turbo"])["key"])
    for body in ({"model": "gpt-4"}, {"tier": "high"}):
        response = client.post("/api/prompt", json={"prompt": "hi", "wait": False, **body}, headers=key)
        assert response.status_code == 403, body
        error = response.get_json()["error"]
        assert error["code"] == "model_not_allowed"
        assert error["details"]["allowed_models"] == ["gpt-3.5-turbo"]
    # Forcing its own tier, or letting the router choose among its models, is accepted.
    for body in ({"tier": "cheap"}, {}):
        allowed = client.post("/api/prompt", json={"prompt": "hi", "wait": False, **body}, headers=key)
        assert allowed.status_code == 202, body


def test_a_batch_item_asking_for_another_model_refuses_the_batch(client: FlaskClient, admin: dict[str, str]) -> None:
    key = _auth(_create(client, admin, allowed_models=["gpt-3.5-turbo"])["key"])
    prompts = [{"prompt": "a", "model": "gpt-3.5-turbo"}, {"prompt": "b", "model": "gpt-4-turbo"}]
    response = client.post("/api/batch", json={"prompts": prompts}, headers=key)
    assert response.status_code == 403
    assert response.get_json()["error"]["details"]["index"] == 1


def test_the_openai_route_refuses_a_model_the_key_may_not_use(client: FlaskClient, admin: dict[str, str]) -> None:
    key = _auth(_create(client, admin, allowed_models=["gpt-3.5-turbo"])["key"])
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=body, headers=key)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "model_not_allowed"


@pytest.fixture
def upstream(keyed_app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMClient]:
    """Run each enqueued job a moment later against a scripted upstream whose cheap model is down."""
    fake = FakeLLMClient()
    fake.script(
        "gpt-3.5-turbo", *[TransientLLMError("503", status_code=503, details={"error_class": "server_error"})] * 30
    )
    publisher = redis.Redis.from_url(UNIT_REDIS_URL)
    deps = worker_deps(
        keyed_app, catalog, fake, sleep=lambda _: None,
        on_finished=lambda job_id: completion_channel.publish_job_done(publisher, job_id),
    )  # fmt: skip
    threads, _ = run_jobs_soon(monkeypatch, deps, delay_s=0.02)
    yield fake
    for thread in threads:
        thread.join()
    publisher.close()


def test_no_accept_path_lets_a_keys_job_call_a_model_outside_its_list(
    keyed_app: Flask, client: FlaskClient, admin: dict[str, str], upstream: FakeLLMClient
) -> None:
    key = _auth(_create(client, admin, allowed_models=["gpt-3.5-turbo"])["key"])
    # A hard prompt, routed: accepted and routed to the key's model, whose fallbacks are other models.
    prompt = client.post("/api/prompt", json={"prompt": HARD, "timeout_s": 10}, headers=key).get_json()
    assert (prompt["status"], prompt["error"]["code"], prompt["model_used"]) == (
        "failed", "upstream_unavailable", "gpt-3.5-turbo",
    )  # fmt: skip
    assert {attempt["model"] for attempt in prompt["attempts"]} == {"gpt-3.5-turbo"}
    chat = client.post(
        "/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": HARD}]}, headers=key
    )
    assert (chat.status_code, chat.get_json()["error"]["code"]) == (503, "upstream_unavailable")
    assert set(upstream.calls) == {"gpt-3.5-turbo"}
    batch = client.post("/api/batch", json={"prompts": [HARD, {"prompt": "hi", "tier": "cheap"}]}, headers=key)
    assert batch.status_code == 202
    with make_sessionmaker(keyed_app.extensions["db_engine"])() as session:
        assert session.scalars(select(RequestLog.allowed_models)).all() == [["gpt-3.5-turbo"]] * 4


def test_an_estimate_routes_among_the_keys_models_as_its_job_would(client: FlaskClient, admin: dict[str, str]) -> None:
    key = _auth(_create(client, admin, allowed_models=["gpt-3.5-turbo"])["key"])
    everyone = client.post("/api/estimate", json={"prompt": HARD, "max_tokens": 100}, headers=admin).get_json()
    narrowed = client.post("/api/estimate", json={"prompt": HARD, "max_tokens": 100}, headers=key).get_json()
    assert (everyone["model"], narrowed["model"], narrowed["escalation_tier"]) == ("gpt-4-turbo", "gpt-3.5-turbo", None)
    assert narrowed["cost"]["worst_case"] < everyone["cost"]["worst_case"]
    refused = client.post("/api/estimate", json={"prompt": HARD, "model": "gpt-4"}, headers=key)
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (403, "model_not_allowed")


def _prompt(client: FlaskClient, key: dict[str, str], max_tokens: int):
    return client.post("/api/prompt", json={"prompt": "hi", "wait": False, "max_tokens": max_tokens}, headers=key)


def test_past_its_tokens_per_minute_a_key_gets_429(client: FlaskClient, admin: dict[str, str]) -> None:
    key = _auth(_create(client, admin, tpm=1000)["key"])
    # One call of "hi" with max_tokens 500 may use 500 completion tokens and a few dozen prompt tokens.
    assert _prompt(client, key, 500).status_code == 202
    refused = _prompt(client, key, 500)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "50"
    error = refused.get_json()["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["limit"] == "tpm"
    assert error["details"]["tpm"] == 1000
    # What is left of the minute still takes a smaller request.
    assert _prompt(client, key, 100).status_code == 202


def test_a_request_larger_than_the_whole_limit_gets_429_without_retry_after(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    key = _auth(_create(client, admin, tpm=100)["key"])
    refused = _prompt(client, key, 200)
    assert refused.status_code == 429
    assert "Retry-After" not in refused.headers
    assert refused.get_json()["error"]["details"]["tokens"] > 200


def test_a_request_refused_for_its_budget_uses_no_tokens(
    client: FlaskClient, admin: dict[str, str], keyed_app: Flask
) -> None:
    created = _create(client, admin, tpm=1000, monthly_budget=0)
    key = _auth(created["key"])
    assert _prompt(client, key, 500).status_code == 402
    assert keyed_app.extensions["token_windows"].used(created["id"]) == 0
    client.patch(f"/api/keys/{created['id']}", json={"monthly_budget": 10}, headers=admin)
    assert _prompt(client, key, 900).status_code == 202


def test_keys_without_a_tpm_are_not_counted(client: FlaskClient, admin: dict[str, str], keyed_app: Flask) -> None:
    created = _create(client, admin)
    assert _prompt(client, _auth(created["key"]), 4000).status_code == 202
    assert keyed_app.extensions["token_windows"].used(created["id"]) == 0


def test_a_budget_finer_than_the_ledger_keeps_is_rounded_down(client: FlaskClient, admin: dict[str, str]) -> None:
    created = _create(client, admin, monthly_budget=0.1 * 3, budget_windows={"day": 0.0037852500000000001})
    assert (created["monthly_budget"], created["budget_windows"]) == (0.3, {"day": 0.003785250})


def test_money_set_over_http_is_exact(client: FlaskClient, admin: dict[str, str], keyed_app: Flask) -> None:
    created = _create(client, admin, monthly_budget=0.1)
    with make_sessionmaker(keyed_app.extensions["db_engine"])() as session:
        assert api_keys.get_or_raise(session, key_id=created["id"]).monthly_budget == Decimal("0.1")


def test_a_keys_budget_window_is_shown_and_bounds_its_requests(client: FlaskClient, admin: dict[str, str]) -> None:
    created = _create(client, admin)
    key = _auth(created["key"])
    accepted = _prompt(client, key, 100)
    assert accepted.status_code == 202
    bound = client.get("/api/budget", headers=key).get_json()["reserved"]
    # The job accepted before the key had windows counts in them, at its whole reservation: two more fit today.
    changed = client.patch(f"/api/keys/{created['id']}", json={"budget_windows": {"day": bound * 3.5, "6h": 1}},
                           headers=admin)  # fmt: skip
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["budget_windows"] == {"day": pytest.approx(bound * 3.5, abs=1e-9), "6h": 1.0}
    assert [_prompt(client, key, 100).status_code for _ in range(3)] == [202, 202, 402]
    refused = _prompt(client, key, 100).get_json()["error"]
    assert (refused["code"], refused["details"]["window"]) == ("budget_exceeded", "day")
    shown = client.get("/api/budget", headers=key).get_json()
    assert [(w["window"], w["spent"], w["reserved"]) for w in shown["windows"]] == [
        ("day", bound, bound * 2), ("6h", bound, bound * 2),
    ]  # fmt: skip
    assert shown["windows"][0]["remaining"] == pytest.approx(bound / 2, abs=1e-9)
    assert client.patch(f"/api/keys/{created['id']}", json={"budget_windows": None}, headers=admin).status_code == 200
    assert _prompt(client, key, 100).status_code == 202


def test_the_openai_model_list_shows_a_key_only_its_models(client: FlaskClient, admin: dict[str, str]) -> None:
    narrowed = _auth(_create(client, admin, allowed_models=["gpt-3.5-turbo"])["key"])
    listed = client.get("/v1/models", headers=narrowed).get_json()["data"]
    assert [model["id"] for model in listed if model["owned_by"] == "model-router-catalog"] == ["gpt-3.5-turbo"]
    everything = client.get("/v1/models", headers=admin).get_json()["data"]
    assert {"gpt-3.5-turbo", "gpt-4"} <= {model["id"] for model in everything}


def test_an_admin_reads_any_scopes_budget_and_a_key_only_its_own(client: FlaskClient, admin: dict[str, str]) -> None:
    created = _create(client, admin, monthly_budget=3, budget_windows={"day": 1})
    scope = f"key:{created['id']}"
    shown = client.get(f"/api/budget?scope={scope}", headers=admin).get_json()
    assert (shown["scope"], shown["monthly_limit"], [w["window"] for w in shown["windows"]]) == (scope, 3.0, ["day"])
    assert client.get("/api/budget?scope=global", headers=admin).get_json()["scope"] == "global"
    key = _auth(created["key"])
    assert client.get(f"/api/budget?scope={scope}", headers=key).get_json()["scope"] == scope
    refused = client.get("/api/budget?scope=global", headers=key)
    assert (refused.status_code, refused.get_json()["error"]["code"]) == (403, "forbidden")
    assert client.get("/api/budget?scope=key:999", headers=admin).status_code == 400
