"""POST /v1/chat/completions and GET /v1/models, driven by the official `openai` SDK over WSGI."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared.errors import TransientLLMError
from shared.store import completion_channel
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import run_jobs_soon
from tests.conftest import worker_deps
from tests.support.fakes import FLUENT
from tests.support.fakes import Cut
from tests.support.fakes import FakeLLMClient


@pytest.fixture
def sdk(app: Flask) -> Iterator[openai.OpenAI]:
    http_client = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://router.test")
    client = openai.OpenAI(api_key="unused", base_url="http://router.test/v1", http_client=http_client, max_retries=0)
    yield client
    client.close()


def _rows(app: Flask, model: type) -> list:
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        return list(session.scalars(select(model)))


def test_a_routed_completion_answers_in_openai_shape_with_router_headers(
    sdk: openai.OpenAI, worker: list[str], app: Flask
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-3.5-turbo"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.startswith("Paris")
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 24)
    assert completion.id == f"chatcmpl-{worker[0]}"
    assert raw.headers["x-router-job-id"] == worker[0]
    assert raw.headers["x-router-tier"] == "cheap"
    assert raw.headers["x-router-escalated"] == "false"
    assert raw.headers["x-router-retries"] == "0"
    assert Decimal(raw.headers["x-router-cost"]) > 0
    assert 0 <= float(raw.headers["x-router-difficulty"]) <= 1
    # The same record and ledger as /api/prompt.
    (job,) = _rows(app, RequestLog)
    assert (job.status.value, job.messages) == (
        "succeeded",
        [{"role": "user", "content": "What is the capital of France?"}],
    )
    (ledger,) = _rows(app, MonthlyBudget)
    assert ledger.total_spent == job.cost and ledger.reserved == 0


def test_a_catalog_model_name_forces_that_model(sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient) -> None:
    completion = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])
    assert completion.model == "gpt-4"
    assert llm.calls == ["gpt-4"]


def test_a_conversation_and_sampling_options_go_upstream_as_sent(
    sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient, app: Flask
) -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a city."},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": [{"type": "text", "text": "Another one?"}]},
    ]
    sdk.chat.completions.create(
        model="router:quality", messages=messages, max_completion_tokens=50, temperature=0.2, top_p=0.9,
        stop=["\n\n"], user="u-1", n=1,
    )  # fmt: skip
    (sent,) = llm.requests
    assert sent["messages"][-1] == {"role": "user", "content": "Another one?"}
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"], "user": "u-1"}
    assert sent["prompt"] == "Answer briefly.\nName a city.\nParis.\nAnother one?"
    (job,) = _rows(app, RequestLog)
    assert (job.preference, job.max_tokens) == ("quality", 50)


def test_models_lists_the_router_aliases_and_the_catalog(sdk: openai.OpenAI, catalog) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert ids[:5] == ["router", "auto", "router:cost", "router:balanced", "router:quality"]
    assert ids[5:] == catalog.model_names


def test_an_exhausted_budget_is_the_sdks_402_error(sdk: openai.OpenAI, app: Flask, worker: list[str]) -> None:
    app.extensions["settings"] = app.extensions["settings"].model_copy(update={"monthly_budget_limit": Decimal("0.01")})
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="router", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 402
    assert caught.value.code == "budget_exceeded"
    assert caught.value.type == "insufficient_quota"
    assert worker == []


def test_an_unknown_model_is_the_sdks_bad_request_error(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.param == "model"
    assert caught.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "router", "messages": []}, "messages"),
        ({"model": "router", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "router", "messages": [{"role": "user", "content": "  "}]}, "messages"),
        ({"model": "router", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        ({"model": "router", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": "router", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ],
)
def test_invalid_requests_are_openai_shaped_400s(client: FlaskClient, body: dict, param: str) -> None:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_a_job_failing_upstream_is_a_503(sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient) -> None:
    down = TransientLLMError("down", status_code=503, details={"error_class": "server_error"})
    for model in ("gpt-3.5-turbo", "claude-3-haiku", "gpt-4", "claude-3-opus", "gpt-4o-mini", "gpt-4o"):
        llm.script(model, *[down] * 10)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 503
    assert worker[0] in caught.value.message


def _key(app: Flask, name: str, **options) -> str:
    from shared.ledger import api_keys

    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        return api_keys.create(session, name=name, **options)[1]


def _keyed_sdk(app: Flask, key: str) -> openai.OpenAI:
    http_client = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://router.test")
    return openai.OpenAI(api_key=key, base_url="http://router.test/v1", http_client=http_client, max_retries=0)


def test_keys_budgets_and_rate_limits_apply_as_on_api(keyed_app: Flask) -> None:
    with _keyed_sdk(keyed_app, "mr_nope") as stranger, pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    assert (caught.value.status_code, caught.value.type) == (401, "authentication_error")
    poor = _keyed_sdk(keyed_app, _key(keyed_app, "poor", monthly_budget=Decimal("0.000001")))
    with poor, pytest.raises(openai.APIStatusError) as caught:
        poor.chat.completions.create(model="router", messages=[{"role": "user", "content": "Hi"}])
    assert (caught.value.status_code, caught.value.code) == (402, "budget_exceeded")
    with _keyed_sdk(keyed_app, _key(keyed_app, "busy", rpm=2)) as busy:
        busy.models.list()
        busy.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            busy.models.list()
    assert caught.value.type == "rate_limit_error"
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 60


def test_a_streamed_completion_relays_the_answer_in_chunks_with_usage_last(
    sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient, app: Flask
) -> None:
    with sdk.chat.completions.with_streaming_response.create(
        model="router", messages=[{"role": "user", "content": "What is the capital of France?"}], stream=True,
        stream_options={"include_usage": True},
    ) as raw:  # fmt: skip
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["x-router-job-id"] == worker[0]
        assert raw.headers["x-router-model"] == "gpt-3.5-turbo"
        chunks = list(raw.parse())
    assert llm.streamed == ["gpt-3.5-turbo"]
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 5 and "".join(texts) == FLUENT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {"gpt-3.5-turbo"}
    assert {c.id for c in chunks} == {f"chatcmpl-{worker[0]}"}
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 24)
    assert all(c.usage is None for c in chunks[:-1])
    (job,) = _rows(app, RequestLog)
    assert (job.status.value, job.stream, job.response) == ("succeeded", True, FLUENT)
    (ledger,) = _rows(app, MonthlyBudget)
    assert ledger.total_spent == job.cost > 0 and ledger.reserved == 0


def test_a_stream_without_include_usage_sends_no_usage(sdk: openai.OpenAI, worker: list[str]) -> None:
    chunks = list(sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {"gpt-4"}


def test_a_stream_cut_by_the_upstream_is_charged_recorded_and_ends_with_an_error(
    sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient, app: Flask
) -> None:
    llm.script("gpt-3.5-turbo", Cut("Paris is the"))
    received: list[str] = []
    stream = sdk.chat.completions.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Paris is the"
    assert worker[0] in caught.value.message
    assert llm.calls == ["gpt-3.5-turbo"]  # neither retried nor handed to a fallback
    (job,) = _rows(app, RequestLog)
    assert (job.status.value, job.error_code, job.response) == ("failed", "upstream_cut", "Paris is the")
    assert (job.prompt_tokens, job.completion_tokens) == (12, 3) and job.cost > 0
    (ledger,) = _rows(app, MonthlyBudget)
    assert ledger.total_spent == job.cost and ledger.reserved == 0


def test_a_stream_failing_before_its_first_token_is_an_error_status(
    sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient
) -> None:
    down = TransientLLMError("down", status_code=503, details={"error_class": "server_error"})
    for model in ("gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"):
        llm.script(model, *[down] * 10)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert caught.value.status_code == 503


def test_a_streamed_answer_is_never_escalated(
    sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient, app: Flask
) -> None:
    from tests.support.fakes import ok

    unsure = ok("I'm not sure, maybe.")
    llm.script("gpt-3.5-turbo", unsure, unsure)
    sdk.chat.completions.create(model="router", messages=[{"role": "user", "content": "Explain gravity"}])
    assert llm.calls == ["gpt-3.5-turbo", "gpt-4"]  # escalated when answered whole
    list(
        sdk.chat.completions.create(
            model="router", messages=[{"role": "user", "content": "Explain gravity"}], stream=True
        )
    )
    assert llm.calls[2:] == ["gpt-3.5-turbo"]


def test_an_answer_cut_at_max_tokens_keeps_finish_reason_length_and_is_not_escalated(
    sdk: openai.OpenAI, worker: list[str], llm: FakeLLMClient, app: Flask
) -> None:
    from tests.support.fakes import ok

    llm.script("gpt-3.5-turbo", ok("Hello there, it is a fine day", finish_reason="length", completion_tokens=16))
    raw = sdk.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": "Say hello in five words."}], max_tokens=16
    )
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "length"
    assert (llm.calls, raw.headers["x-router-escalated"]) == (["gpt-3.5-turbo"], "false")
    (job,) = _rows(app, RequestLog)
    assert (job.truncated, job.max_tokens) == (True, 16)


def test_a_job_no_model_would_admit_before_its_deadline_is_a_429(
    app: Flask, catalog, llm: FakeLLMClient, monkeypatch: pytest.MonkeyPatch, publisher: redis.Redis, sdk: openai.OpenAI
) -> None:
    import fakeredis

    from shared.upstream.admission import Admission
    from shared.upstream.admission import RateLimits

    admission = Admission(fakeredis.FakeRedis())
    for model in catalog.model_names:
        # One a minute, and the next twenty minutes' turns taken: past any deadline.
        admission.learn(model, RateLimits(limit_requests=1), throttled=False)
        for _ in range(20):
            admission.take(model, tokens=1, max_wait_s=3600)
    deps = worker_deps(app, catalog, llm, admission=admission,
                       on_finished=lambda job_id: completion_channel.publish_job_done(publisher, job_id))  # fmt: skip
    threads, _ = run_jobs_soon(monkeypatch, deps, delay_s=0.02)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}])
    for thread in threads:
        thread.join()
    assert caught.value.status_code == 429 and llm.calls == []
    assert "gpt-3.5-turbo: rate limited by the upstream's requests limit (1/min)" in caught.value.message
