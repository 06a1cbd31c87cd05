"""Streams on /v1/chat/completions through slow upstreams and a failing Redis: whole, kept alive, or ended
with an error in OpenAI's shape, never cut silently or answered 500."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis
from flask import Flask

from shared.config import Settings
from shared.errors import TransientLLMError
from shared.store import stream_relay
from tests.conftest import make_test_settings
from tests.support.fakes import FLUENT
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import Slow
from tests.support.fakes import ok

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
KEEPALIVE_S = 2.0
XREAD = redis.Redis.xread
ALL_MODELS = ("gpt-3.5-turbo", "claude-3-haiku", "gpt-4", "claude-3-opus", "gpt-4o-mini", "gpt-4o", "gpt-4-turbo")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_test_settings(f"sqlite:///{tmp_path}/router.db", stream_keepalive_s=KEEPALIVE_S)


@pytest.fixture
def http(app: Flask) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://router.test") as client:
        yield client


@pytest.fixture
def sdk(http: httpx.Client) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="unused", base_url="http://router.test/v1", http_client=http, max_retries=0) as client:
        yield client


def _events(http: httpx.Client) -> list[str]:
    """POST a streamed chat and return its SSE events as sent, comments included."""
    body = {"model": "gpt-3.5-turbo", "messages": QUESTION, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return [event for event in response.read().decode().split("\n\n") if event]


def _text(events: list[str]) -> str:
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def test_a_stream_silent_longer_than_redis_pys_socket_timeout_before_and_after_its_first_token_arrives_whole(
    http: httpx.Client, worker: list[str], llm: FakeLLMClient
) -> None:
    # redis-py 8 times a socket out after 5 s, the length the stream reads used to block for.
    llm.script("gpt-3.5-turbo", Slow(ok(), first_s=6, pause_s=6))
    events = _events(http)
    assert _text(events) == FLUENT and events[-1] == "data: [DONE]"
    # The pause after the first token was bridged by keep-alive comments, at most KEEPALIVE_S apart.
    first_text = next(i for i, e in enumerate(events) if e.startswith("data: {"))
    keepalives = [e for e in events[first_text:] if e.startswith(":")]
    assert keepalives and set(keepalives) == {": keep-alive"} and len(keepalives) >= 6 // KEEPALIVE_S - 1


def test_the_sdk_reads_a_paused_stream_whole(sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient) -> None:
    llm.script("gpt-3.5-turbo", Slow(ok(), first_s=2.5, pause_s=2.5))
    chunks = list(sdk.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == FLUENT
    assert chunks[-1].choices[0].finish_reason == "stop"


def _fail_reads_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """Make every XREAD after the first `calls` fail as a Redis that went away."""
    made = 0

    def xread(self, *args, **kwargs):
        nonlocal made
        made += 1
        if made > calls:
            raise redis.ConnectionError("Connection closed by server.")
        return XREAD(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "xread", xread)


def test_a_redis_failure_mid_stream_ends_it_with_an_openai_error_event(
    http: httpx.Client, sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm.script("gpt-3.5-turbo", Slow(ok(), pause_s=0.5))
    _fail_reads_after(monkeypatch, 1)
    events = _events(http)
    assert _text(events) == "Paris "
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("server_error", "unavailable")
    assert worker[0] in error["message"] and f"/api/jobs/{worker[0]}" in error["message"]
    # The SDK raises on it instead of returning a cut answer as if it were whole.
    llm.script("gpt-3.5-turbo", Slow(ok(), pause_s=0.5))
    _fail_reads_after(monkeypatch, 1)
    stream = sdk.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, stream=True)
    with pytest.raises(openai.APIError, match="cannot be relayed"):
        list(stream)


def test_a_stream_whose_relay_cannot_be_read_at_all_answers_an_openai_shaped_503(
    http: httpx.Client, worker: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_reads_after(monkeypatch, 0)
    response = http.post("/v1/chat/completions", json={"model": "router", "messages": QUESTION, "stream": True})
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "unavailable") and worker[0] in error["message"]


def test_a_stream_whose_upstream_hangs_answers_an_openai_shaped_504(
    sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient
) -> None:
    hung = TransientLLMError("gpt-3.5-turbo: upstream timed out", details={"error_class": "timeout"})
    for model in ALL_MODELS:
        llm.script(model, *[hung] * 10)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="gpt-3.5-turbo", messages=QUESTION, stream=True)
    assert caught.value.status_code == 504
    assert caught.value.type == "server_error" and caught.value.code == "timeout"
    assert worker[0] in caught.value.message


def test_a_blocking_stream_read_longer_than_redis_pys_default_socket_timeout_returns_empty(
    settings: Settings,
) -> None:
    reader = stream_relay.Reader(settings.redis_url, max_block_s=6, max_connections=10)
    try:
        assert reader.read("no-such-job", after="0-0", block_ms=6000) == []
    finally:
        reader.close()
