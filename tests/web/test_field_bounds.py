"""Every request field has a bound: one past it is a 400 naming the field, at it the request goes through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.store.base import Base
from tests.conftest import make_test_settings
from tests.support.fakes import TimedOutWaiter
from web import schemas

HOOK = "https://hooks.example.com/"
CHAT = {"model": "router", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def app(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    from web.app import create_app

    app = create_app(
        make_test_settings(
            f"sqlite:///{tmp_path}/bounds.db",
            webhook_secret="s3cret",
            webhook_allowed_hosts=["hooks.example.com"],
            max_batch_items=5,
        )
    )
    app.config["TESTING"] = True
    Base.metadata.create_all(app.extensions["db_engine"])
    monkeypatch.setitem(app.extensions, "waiter", TimedOutWaiter())
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture(autouse=True)
def _no_broker(app: Flask, enqueued: list[str]) -> None:
    """Jobs are recorded, never sent."""


def _message(**fields: Any) -> dict[str, Any]:
    return {**CHAT, "messages": [{"role": "user", "content": "Hi", **fields}]}


# (path, body one past a bound, the field the 400 names)
OVER = [
    ("/api/prompt", {"prompt": "Hi", "model": "m" * (schemas.MODEL_NAME_CHARS + 1)}, "model"),
    ("/api/prompt", {"prompt": "Hi", "tier": "t" * (schemas.TIER_NAME_CHARS + 1)}, "tier"),
    ("/api/prompt", {"prompt": "Hi", "callback_url": HOOK + "a" * schemas.CALLBACK_URL_CHARS}, "callback_url"),
    ("/api/batch", {"prompts": ["Hi"], "callback_url": HOOK + "a" * schemas.CALLBACK_URL_CHARS}, "callback_url"),
    ("/api/batch", {"prompts": [{"prompt": "Hi", "model": "m" * 129}]}, "prompts[0].model"),
    ("/api/batch", {"prompts": ["Hi"] * 6}, "prompts"),  # MAX_BATCH_ITEMS=5 here
    ("/v1/chat/completions", {**CHAT, "model": "m" * (schemas.MODEL_NAME_CHARS + 1)}, "model"),
    ("/v1/chat/completions", {**CHAT, "messages": CHAT["messages"] * (schemas.MAX_CHAT_MESSAGES + 1)}, "messages"),
    ("/v1/chat/completions", {**CHAT, "stop": ["x"] * (schemas.MAX_STOP_SEQUENCES + 1)}, "stop"),
    ("/v1/chat/completions", {**CHAT, "stop": "x" * (schemas.STOP_SEQUENCE_CHARS + 1)}, "stop"),
    ("/v1/chat/completions", {**CHAT, "stop": ["x" * (schemas.STOP_SEQUENCE_CHARS + 1)]}, "stop"),
    ("/v1/chat/completions", {**CHAT, "user": "u" * (schemas.USER_CHARS + 1)}, "user"),
    ("/v1/chat/completions", {**CHAT, "seed": 2**63}, "seed"),
    ("/v1/chat/completions", _message(name="n" * (schemas.MESSAGE_NAME_CHARS + 1)), "messages.0.name"),
    (
        "/v1/chat/completions",
        _message(content=[{"type": "text", "text": "a"}] * (schemas.MAX_CONTENT_PARTS + 1)),
        "messages.0.content",
    ),
    ("/v1/chat/completions", _message(content="x" * 32001), "messages.0.content"),
]


@pytest.mark.parametrize(("path", "body", "field"), OVER, ids=[f"{path}:{field}" for path, _, field in OVER])
def test_one_past_a_bound_is_a_400_naming_the_field(
    client: FlaskClient, enqueued: list[str], path: str, body: dict[str, Any], field: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    if path.startswith("/v1/"):
        assert (error["type"], error["param"]) == ("invalid_request_error", field)
    else:
        assert (error["code"], error["details"]["field"]) == ("invalid_request", field)
    assert enqueued == []


AT = [
    ("/api/prompt", {"prompt": "Hi", "wait": False, "callback_url": HOOK + "a" * (2048 - len(HOOK))}),
    ("/api/batch", {"prompts": ["Hi"] * 5}),
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "messages": [{"role": "user", "content": "Hi", "name": "n" * 64}] * schemas.MAX_CHAT_MESSAGES,
            "stop": ["x" * schemas.STOP_SEQUENCE_CHARS] * schemas.MAX_STOP_SEQUENCES,
            "user": "u" * schemas.USER_CHARS,
            "seed": 2**63 - 1,
        },
    ),
]


@pytest.mark.parametrize(("path", "body"), AT, ids=[path for path, _ in AT])
def test_at_the_bounds_the_request_is_accepted(
    client: FlaskClient, enqueued: list[str], path: str, body: dict[str, Any]
) -> None:
    response = client.post(path, json=body)
    # /v1 waits for the job (here: times out at once, 504); the others accept it (202).
    assert response.status_code in (202, 504), response.get_json()
    assert enqueued


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("model=" + "m" * (schemas.MODEL_NAME_CHARS + 1), "model"),
        ("tier=" + "t" * (schemas.TIER_NAME_CHARS + 1), "tier"),
        ("cursor=" + "c" * (schemas.CURSOR_CHARS + 1), "cursor"),
        ("q=" + "q" * 1001, "q"),
    ],
)
def test_search_parameters_past_their_bound_are_a_400_naming_them(client: FlaskClient, query: str, field: str) -> None:
    response = client.get(f"/api/jobs?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == field
