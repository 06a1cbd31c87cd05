"""The real OpenAIChatClient, through the one retry layer, against an upstream that answers what it should not.

Every answer is untrusted: usage that cannot be true is charged at the call's bound and flagged; an answer
that is not a chat completion ends its attempt `upstream_bad_response`, charged at its bound; no body holds an
attempt past its time limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest

from shared.jobs import dispatch
from shared.ledger import budget
from shared.ledger import call_bound
from shared.routing.catalog import Catalog
from shared.upstream.attempts import UNCONFIRMED
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.llm_client import BAD_RESPONSE
from shared.upstream.llm_client import UPSTREAM_BROKEN
from shared.upstream.llm_client import CallResult
from shared.upstream.llm_client import OpenAIChatClient
from shared.upstream.llm_client import RetryPolicy
from shared.upstream.llm_client import complete_with_retries
from tests.conftest import make_test_settings
from tests.support.hostile import BAD_ANSWERS
from tests.support.hostile import HostileUpstream
from tests.support.hostile import running_hostile

CHEAP = "gpt-3.5-turbo"
MAX_TOKENS = 50
POLICY = RetryPolicy(max_attempts=3, backoff_initial_s=0, backoff_max_s=0)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with running_hostile(interval_s=0.2) as server:
        yield server


@pytest.fixture
def client(hostile: HostileUpstream, tmp_path: Path) -> Iterator[OpenAIChatClient]:
    settings = make_test_settings(f"sqlite:///{tmp_path}/router.db", openai_base_url=hostile.base_url)
    client = OpenAIChatClient(settings)
    yield client
    client.close()


def _call(client: OpenAIChatClient, catalog: Catalog, prompt: str, *, stream: bool = False,
          deadline_s: float | None = None) -> CallResult:  # fmt: skip
    deltas: list[str] = []
    return complete_with_retries(
        client,
        model=catalog.get_model(CHEAP),
        prompt=prompt,
        max_tokens=MAX_TOKENS,
        policy=POLICY,
        sleep=lambda _: None,
        deadline=None if deadline_s is None else time.monotonic() + deadline_s,
        on_delta=deltas.append if stream else None,
    )


def _bound_cost(catalog: Catalog, prompt: str):  # type: ignore[no-untyped-def]
    return call_bound.call_bound(prompt=prompt, max_tokens=MAX_TOKENS).cost(catalog.get_model(CHEAP))


@pytest.mark.parametrize(
    "mode",
    ["negative_usage", "huge_usage", "fractional_usage", "string_usage", "over_context", "over_max_tokens", "no_usage"],
)
def test_usage_that_cannot_be_true_is_charged_at_the_bound_and_flagged(
    client: OpenAIChatClient, catalog: Catalog, hostile: HostileUpstream, mode: str
) -> None:
    prompt = f"{mode} What is the capital of France?"
    before = hostile.calls_in(mode)
    result = _call(client, catalog, prompt)
    assert result.completion is not None and result.completion.text.startswith("Paris")
    [attempt] = result.attempts
    bound = call_bound.call_bound(prompt=prompt, max_tokens=MAX_TOKENS)
    assert attempt.outcome == "ok" and attempt.usage_invalid
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (bound.prompt_tokens, bound.completion_tokens)
    assert attempt.cost == _bound_cost(catalog, prompt) > 0
    assert hostile.calls_in(mode) == before + 1


def test_possible_usage_above_the_bound_is_recorded_as_given(client: OpenAIChatClient, catalog: Catalog) -> None:
    result = _call(client, catalog, "over_reported hi")
    [attempt] = result.attempts
    assert not attempt.usage_invalid
    assert attempt.prompt_tokens == 5_000
    assert call_bound.call_bound(prompt="over_reported hi", max_tokens=MAX_TOKENS).exceeded_by(attempt)


def test_valid_usage_is_taken_as_given(client: OpenAIChatClient, catalog: Catalog) -> None:
    [attempt] = _call(client, catalog, "ok hi").attempts
    assert (attempt.outcome, attempt.usage_invalid, attempt.prompt_tokens, attempt.completion_tokens) == (
        "ok", False, 12, 7,
    )  # fmt: skip


@pytest.mark.parametrize("mode", [*BAD_ANSWERS, "non_json"])
def test_an_answer_that_is_not_a_chat_completion_ends_the_attempt_charged_at_its_bound(
    client: OpenAIChatClient, catalog: Catalog, hostile: HostileUpstream, mode: str
) -> None:
    prompt = f"{mode} What is the capital of France?"
    before = hostile.calls_in(mode)
    result = _call(client, catalog, prompt)
    assert result.completion is None
    assert result.error is not None and result.error.code == "upstream_bad_response"
    # Not retried on the same model: each try would cost another bound.
    [attempt] = result.attempts
    assert (attempt.outcome, attempt.error_class) == (UNCONFIRMED, BAD_RESPONSE)
    assert attempt.cost == _bound_cost(catalog, prompt)
    assert BAD_RESPONSE in UPSTREAM_BROKEN  # the model's circuit counts it
    assert hostile.calls_in(mode) == before + 1


@pytest.mark.parametrize("mode", ["stream_non_json_first", "stream_bad_delta", "stream_empty", "stream_json_body"])
def test_a_stream_whose_first_event_is_not_valid_is_a_bad_response(
    client: OpenAIChatClient, catalog: Catalog, mode: str
) -> None:
    prompt = f"{mode} hi"
    result = _call(client, catalog, prompt, stream=True)
    assert result.error is not None and result.error.code == "upstream_bad_response"
    [attempt] = result.attempts
    assert (attempt.outcome, attempt.cost) == (UNCONFIRMED, _bound_cost(catalog, prompt))


def test_a_stream_event_that_is_not_json_after_the_first_token_ends_the_stream_charged_at_its_bound(
    client: OpenAIChatClient, catalog: Catalog
) -> None:
    prompt = "stream_non_json_later hi"
    result = _call(client, catalog, prompt, stream=True)
    assert result.error is not None and result.error.code == "upstream_bad_response"
    assert result.error.partial.text == "Paris"  # type: ignore[attr-defined]
    [attempt] = result.attempts
    assert (attempt.outcome, attempt.cost) == (UNCONFIRMED, _bound_cost(catalog, prompt))


def test_a_streams_usage_that_cannot_be_true_is_charged_at_the_bound(
    client: OpenAIChatClient, catalog: Catalog
) -> None:
    prompt = "stream_negative_usage hi"
    result = _call(client, catalog, prompt, stream=True)
    assert result.completion is not None and result.completion.text == "Paris is the capital."
    [attempt] = result.attempts
    assert attempt.usage_invalid and attempt.cost == _bound_cost(catalog, prompt)


@pytest.mark.parametrize(("mode", "stream"), [("trickle", False), ("hang_body", False), ("stream_trickle", True)])
def test_no_body_holds_an_attempt_past_its_time_limit(
    client: OpenAIChatClient, catalog: Catalog, mode: str, stream: bool
) -> None:
    # A byte (or a token) every 0.2 s: httpx's read timeout, counted per read, never fires.
    started = time.monotonic()
    result = _call(client, catalog, f"{mode} hi", stream=stream, deadline_s=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, elapsed
    assert result.completion is None and result.error is not None
    if stream:
        assert result.error.code == "upstream_cut"  # its first token was out: billed for what arrived
    else:
        assert result.attempts[0].error_class == "timeout"


@pytest.mark.parametrize(("mode", "state"), [("non_json", "open"), ("negative_usage", "closed")])
def test_bad_answers_open_the_models_circuit_impossible_usage_does_not(
    client: OpenAIChatClient, catalog: Catalog, hostile: HostileUpstream, tmp_path: Path, mode: str, state: str
) -> None:
    """A bad answer says the upstream is broken; an answer with impossible usage is an answer, billed at its bound."""
    breaker = CircuitBreaker(fakeredis.FakeRedis(), BreakerPolicy(min_failures=3, failure_rate=0.5, cooldown_s=60))
    settings = make_test_settings(f"sqlite:///{tmp_path}/router.db", openai_base_url=hostile.base_url)
    using = dispatch.Answerer(catalog=catalog, settings=settings, client=client, breaker=breaker, sleep=lambda _: None)
    prompt = f"{mode} What is the capital of France?"
    reserved = budget.reservation_bound(
        catalog=catalog, tiers=catalog.tiers, prompt=prompt, max_tokens=MAX_TOKENS, escalation=True
    )
    job = dispatch.Job(
        prompt=prompt, max_tokens=MAX_TOKENS, preference="balanced", model=CHEAP, tier=None, max_tier=None,
        reserved_cost=reserved, deadline_s=10.0,
    )  # fmt: skip
    for _ in range(3):
        assert dispatch.answer(job, using=using).cost <= reserved
    assert breaker.state(CHEAP) == state
