"""/v1 on the real stack: the official `openai` SDK (and langchain-openai) pointed at the router's base URL.

gunicorn (gevent) serves Flask, a Celery worker streams from the simulator over HTTP and relays the deltas
through Redis (DB 7) to the waiting request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import migrated_sqlite_url
from tests.support.stack import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_simulator")]

REDIS_URL = "redis://127.0.0.1:6379/7"
# Small enough that one gpt-4 call allowed 4096 tokens cannot be reserved.
BUDGET_LIMIT = "0.2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
KEEPALIVE_S = 2
# Longer than redis-py's default socket timeout (5 s) and than several keep-alive intervals.
SILENCE_MS = 7000


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    database_url = migrated_sqlite_url(tmp_path_factory.mktemp("db"))
    settings = {
        **QUICK_RETRIES,
        "MONTHLY_BUDGET_LIMIT": BUDGET_LIMIT,
        # Short, so that waits of a few seconds span several keep-alives and blocked stream reads.
        "STREAM_KEEPALIVE_S": str(KEEPALIVE_S),
    }
    with running_stack(
        database_url=database_url, redis_url=REDIS_URL, log_dir=tmp_path_factory.mktemp("logs"), settings=settings
    ) as stack:
        yield stack


@pytest.fixture
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(api_key="unused", base_url=f"{stack.web}/v1", max_retries=0, timeout=30)
    yield client
    client.close()


def test_a_routed_completion(sdk: openai.OpenAI, stack: Stack) -> None:
    before = http("GET", f"{stack.web}/api/stats")[2]["total_requests"]
    raw = sdk.chat.completions.with_raw_response.create(model="router", messages=QUESTION)
    completion = raw.parse()
    assert completion.model == "gpt-3.5-turbo" and raw.headers["x-router-tier"] == "cheap"
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0
    job_id = raw.headers["x-router-job-id"]
    assert completion.id == f"chatcmpl-{job_id}"
    # The same job record and ledger as /api/prompt.
    job = http("GET", f"{stack.web}/api/jobs/{job_id}")[2]
    assert (job["status"], job["model_used"], job["cost"]) == (
        "succeeded", "gpt-3.5-turbo", float(raw.headers["x-router-cost"])
    )  # fmt: skip
    assert http("GET", f"{stack.web}/api/stats")[2]["total_requests"] == before + 1


def test_a_forced_model(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model="gpt-4-turbo", messages=QUESTION, max_tokens=50)
    assert completion.model == "gpt-4-turbo"


def test_a_streamed_completion_arrives_incrementally_with_usage_last(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="router", messages=QUESTION, stream=True, stream_options={"include_usage": True}, max_tokens=200
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert {c.model for c in chunks} == {"gpt-3.5-turbo"}


def test_the_first_chunk_arrives_before_the_simulator_has_finished(sdk: openai.OpenAI, stack: Stack) -> None:
    http("POST", f"{stack.sim}/sim/config", {"ttft_ms": 100, "latency_ms": 2000})
    started = time.monotonic()
    stream = sdk.chat.completions.create(model="router", messages=QUESTION, stream=True)
    first_at, last_at, pieces = None, 0.0, 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces += 1
            first_at = first_at if first_at is not None else time.monotonic() - started
        last_at = time.monotonic() - started
    assert first_at is not None and pieces > 1
    assert last_at >= 1.9  # the simulator took its 2 s ...
    assert first_at < 1.0  # ... and the first token was relayed long before that


def test_an_exhausted_budget_surfaces_as_the_sdks_402_error(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="gpt-4", messages=QUESTION, max_tokens=4096)
    assert caught.value.status_code == 402
    assert (caught.value.type, caught.value.code) == ("insufficient_quota", "budget_exceeded")


def test_models_lists_aliases_and_catalog(sdk: openai.OpenAI) -> None:
    ids = [model.id for model in sdk.models.list()]
    assert {"router", "auto", "router:cost", "router:balanced", "router:quality", "gpt-3.5-turbo"} <= set(ids)


def test_langchain_chat_openai_invokes_and_streams(stack: Stack) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(
        model="router", base_url=f"{stack.web}/v1", api_key="unused", max_retries=0, timeout=30
    )
    message = chat.invoke("What is the capital of France?")
    assert message.content
    assert message.response_metadata["model_name"] == "gpt-3.5-turbo"
    pieces = [chunk.content for chunk in chat.stream("What is the capital of France?")]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces)


def test_a_stream_silent_for_7_s_before_its_first_token_and_7_s_mid_way_arrives_whole(
    sdk: openai.OpenAI, stack: Stack
) -> None:
    http("POST", f"{stack.sim}/sim/config", {"ttft_ms": SILENCE_MS, "pause_ms": SILENCE_MS})
    started = time.monotonic()
    raw = sdk.chat.completions.with_raw_response.create(model="router", messages=QUESTION, stream=True, max_tokens=200)
    chunks = list(raw.parse())
    assert time.monotonic() - started >= 2 * SILENCE_MS / 1000
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    job = http("GET", f"{stack.web}/api/jobs/{raw.headers['x-router-job-id']}")[2]
    assert (job["status"], job["response"]) == ("succeeded", text) and text


def test_a_paused_stream_is_kept_alive_with_sse_comments(stack: Stack) -> None:
    http("POST", f"{stack.sim}/sim/config", {"pause_ms": SILENCE_MS})
    body = {"model": "router", "messages": QUESTION, "stream": True, "max_tokens": 200}
    events: list[str] = []
    with httpx.stream("POST", f"{stack.web}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                events.append(line)
    first_text = next(i for i, e in enumerate(events) if e.startswith("data: {"))
    keepalives = [e for e in events[first_text:] if e.startswith(":")]
    assert set(keepalives) == {": keep-alive"} and len(keepalives) >= SILENCE_MS // 1000 // KEEPALIVE_S - 1
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_client_leaving_a_stream_cancels_its_job_and_it_is_charged_its_bound(
    sdk: openai.OpenAI, stack: Stack
) -> None:
    http("POST", f"{stack.sim}/sim/config", {"latency_ms": 20000})  # the answer trickles in over 20 s
    stream = sdk.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Explain tides in detail."}], stream=True, max_tokens=800
    )
    next(iter(stream))
    stream.close()
    job_id = stream.response.headers["x-router-job-id"]
    left = time.monotonic()
    job: dict = {}
    while time.monotonic() - left < 15:
        job = http("GET", f"{stack.web}/api/jobs/{job_id}")[2]
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.2)
    # Stopped within a few relayed chunks (each ~1.3 s apart here), long before the upstream's 20 s.
    assert time.monotonic() - left < 8
    assert (job["status"], job["error"]["code"]) == ("failed", "cancelled")
    # Charged at its bound, unconfirmed: what the upstream produced past what arrived is not known.
    assert job["cost"] > 0 and job["completion_tokens"] == 800 and job["unconfirmed_cost"] == job["cost"]
    # Never below what the upstream billed: the simulator bills the tokens it sent before the stream was closed.
    billed: dict = {}
    for _ in range(50):
        billed = http("GET", f"{stack.sim}/sim/stats")[2]["models"]["gpt-4"]
        if billed["completion_tokens"] <= job["completion_tokens"]:
            break
        time.sleep(0.1)
    assert 0 < billed["completion_tokens"] <= job["completion_tokens"]
    assert billed["prompt_tokens"] <= job["prompt_tokens"]
