"""The response cache on the real stack: gunicorn, a Celery worker, Redis (DB 6), the simulator over HTTP.

The simulator's /sim/stats counts every upstream call, so "answered from the cache" means "no new call".
Each test asks its own questions: cached answers outlive a test within the module's stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
from sqlalchemy.orm import Session

from shared.store.models import RequestLog
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import migrated_sqlite_url
from tests.support.stack import running_stack
from tests.support.stack import upstream_calls

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_simulator")]

REDIS_URL = "redis://127.0.0.1:6379/6"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory) -> str:
    return migrated_sqlite_url(tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory) -> Iterator[Stack]:
    settings = {
        **QUICK_RETRIES,
        "MONTHLY_BUDGET_LIMIT": "5.0",
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


def _upstream_calls(stack: Stack) -> int:
    return sum(upstream_calls(stack).values())


def _ask(stack: Stack, prompt: str, **fields: object) -> dict:
    status, _, body = http("POST", f"{stack.web}/api/prompt", {"prompt": prompt, **fields})
    assert status == 200, body
    assert body["status"] == "succeeded", body
    return body


def _row(db: Session, job_id: str) -> RequestLog:
    db.expire_all()
    row = db.get(RequestLog, job_id)
    assert row is not None
    return row


def test_a_repeated_prompt_makes_one_upstream_call(stack: Stack, db: Session) -> None:
    first = _ask(stack, "Name the largest planet in the solar system.")
    calls = _upstream_calls(stack)
    second = _ask(stack, "Name the largest planet in the solar system.")
    assert _upstream_calls(stack) == calls
    assert (first["cached"], second["cached"], second["cost"]) == (False, True, 0)
    assert (second["response"], second["model_used"], second["tier"]) == (
        first["response"], first["model_used"], first["tier"]
    )  # fmt: skip
    assert (second["prompt_tokens"], second["completion_tokens"]) == (
        first["prompt_tokens"],
        first["completion_tokens"],
    )
    original, cached = _row(db, first["job_id"]), _row(db, second["job_id"])
    assert cached.cache_key == original.cache_key is not None
    assert (cached.cost, cached.reserved_cost, cached.settled) == (Decimal(0), Decimal(0), True)


@pytest.mark.parametrize(
    "change",
    [{"max_tokens": 300}, {"preference": "quality"}, {"model": "gpt-4-turbo"}, {"tier": "mid"}, {"cache": False}],
    ids=lambda change: next(iter(change)),
)
def test_a_changed_parameter_or_cache_false_calls_the_upstream(stack: Stack, change: dict[str, object]) -> None:
    prompt = f"Which ocean is the deepest? ({next(iter(change))})"
    _ask(stack, prompt)
    calls = _upstream_calls(stack)
    assert _ask(stack, prompt, **change)["cached"] is False
    assert _upstream_calls(stack) > calls


def test_a_cached_answer_without_waiting_is_already_finished(stack: Stack) -> None:
    _ask(stack, "What is the boiling point of water at sea level?")
    calls = _upstream_calls(stack)
    status, _, body = http(
        "POST", f"{stack.web}/api/prompt", {"prompt": "What is the boiling point of water at sea level?", "wait": False}
    )
    assert status == 202, body
    assert body["status"] == "succeeded"
    assert http("GET", f"{stack.web}{body['poll_url']}")[2]["cached"] is True
    assert _upstream_calls(stack) == calls


def test_stats_count_cached_requests(stack: Stack) -> None:
    before = http("GET", f"{stack.web}/api/stats")[2]
    _ask(stack, "Who wrote Hamlet?")
    _ask(stack, "Who wrote Hamlet?")
    after = http("GET", f"{stack.web}/api/stats")[2]
    assert after["total_requests"] == before["total_requests"] + 2
    assert after["cache_hits"] == before["cache_hits"] + 1


CHAT = [{"role": "user", "content": "What is the chemical symbol for gold?"}]


def test_a_repeated_chat_completion_makes_one_upstream_call(sdk: openai.OpenAI, stack: Stack) -> None:
    first = sdk.chat.completions.with_raw_response.create(model="router", messages=CHAT, temperature=0)
    calls = _upstream_calls(stack)
    second = sdk.chat.completions.with_raw_response.create(model="router", messages=CHAT, temperature=0)
    assert _upstream_calls(stack) == calls
    assert (first.headers["x-router-cached"], second.headers["x-router-cached"]) == ("false", "true")
    assert float(second.headers["x-router-cost"]) == 0
    answer, repeated = first.parse(), second.parse()
    assert repeated.choices[0].message.content == answer.choices[0].message.content
    assert (repeated.model, repeated.usage) == (answer.model, answer.usage)


@pytest.mark.parametrize(
    "change",
    [{"temperature": 0.5}, {"max_tokens": 300}, {"model": "router:quality"}, {"extra_body": {"cache": False}}],
    ids=["temperature", "max_tokens", "preference", "cache_false"],
)
def test_a_changed_chat_parameter_or_cache_false_calls_the_upstream(
    sdk: openai.OpenAI, stack: Stack, change: dict[str, object]
) -> None:
    messages = [{"role": "user", "content": f"What is the chemical symbol for silver? ({next(iter(change))})"}]
    sdk.chat.completions.create(model="router", messages=messages, temperature=0)
    calls = _upstream_calls(stack)
    raw = sdk.chat.completions.with_raw_response.create(
        **{"model": "router", "messages": messages, "temperature": 0, **change}
    )
    assert raw.headers["x-router-cached"] == "false"
    assert _upstream_calls(stack) > calls


def test_a_sampled_chat_is_never_cached(sdk: openai.OpenAI, stack: Stack) -> None:
    messages = [{"role": "user", "content": "Suggest a name for a cat."}]
    sdk.chat.completions.create(model="router", messages=messages, temperature=0.9)
    calls = _upstream_calls(stack)
    raw = sdk.chat.completions.with_raw_response.create(model="router", messages=messages, temperature=0.9)
    assert raw.headers["x-router-cached"] == "false"
    assert _upstream_calls(stack) > calls


def test_a_streamed_chat_bypasses_the_cache(sdk: openai.OpenAI, stack: Stack) -> None:
    sdk.chat.completions.create(model="router", messages=CHAT)
    calls = _upstream_calls(stack)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in sdk.chat.completions.create(model="router", messages=CHAT, stream=True)
        if chunk.choices
    )
    assert text
    assert _upstream_calls(stack) > calls
