"""OpenAIChatClient.stream and streamed complete_with_retries: deltas, usage, chat turns, and cut streams."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from shared.errors import TransientLLMError
from shared.ledger import call_bound
from shared.routing.catalog import Catalog
from shared.upstream import token_count
from shared.upstream.llm_client import CallerGone
from shared.upstream.llm_client import OpenAIChatClient
from shared.upstream.llm_client import RetryPolicy
from shared.upstream.llm_client import StreamCancelled
from shared.upstream.llm_client import StreamInterrupted
from shared.upstream.llm_client import complete_with_retries
from tests.conftest import make_test_settings
from tests.support.sim import SimServer
from tests.support.sim import running_sim

CHEAP = "gpt-3.5-turbo"
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name a city."},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Another one, please?"},
]
NO_WAIT = RetryPolicy(max_attempts=3, backoff_initial_s=0, backoff_max_s=0)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with running_sim() as server:
        yield server


@pytest.fixture
def client(tmp_path: Path, sim: SimServer) -> Iterator[OpenAIChatClient]:
    client = OpenAIChatClient(make_test_settings(f"sqlite:///{tmp_path}/r.db", openai_base_url=sim.base_url))
    yield client
    client.close()


def test_a_stream_relays_every_delta_and_returns_the_servers_usage(
    client: OpenAIChatClient, sim: SimServer, catalog: Catalog
) -> None:
    deltas: list[str] = []
    completion = client.stream(
        model=catalog.get_model(CHEAP), prompt="unused", max_tokens=100, on_delta=deltas.append, messages=MESSAGES
    )
    billed = sim.stats()[CHEAP]
    assert len(deltas) > 1 and "".join(deltas) == completion.text
    assert completion.finish_reason in ("stop", "length")
    assert (completion.prompt_tokens, completion.completion_tokens) == (
        billed["prompt_tokens"],
        billed["completion_tokens"],
    )
    # Every turn went upstream: the simulator billed the whole conversation.
    assert completion.prompt_tokens == token_count.count_prompt_tokens(m["content"] for m in MESSAGES)


def test_streamed_retries_happen_before_the_first_token(client: OpenAIChatClient, sim: SimServer, catalog) -> None:
    sim.configure(fail_first="500:1")
    deltas: list[str] = []
    result = complete_with_retries(
        client, model=catalog.get_model(CHEAP), prompt="Hello there", max_tokens=50, policy=NO_WAIT,
        sleep=lambda _: None, on_delta=deltas.append,
    )  # fmt: skip
    assert result.completion is not None and result.retry_count == 1
    assert "".join(deltas) == result.completion.text


def _cutting_transport(chunks: list[str]) -> httpx.MockTransport:
    def stream() -> Iterator[bytes]:
        for piece in chunks:
            body = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": CHEAP,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}  # fmt: skip
            yield f"data: {json.dumps(body)}\n\n".encode()
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream())

    return httpx.MockTransport(handler)


def test_a_cut_stream_is_billed_for_what_it_produced_and_not_retried(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_test_settings(f"sqlite:///{tmp_path}/r.db")
    client = OpenAIChatClient(settings)
    model = catalog.get_model(CHEAP)
    sdk = openai.OpenAI(
        api_key="k", base_url="http://upstream.test/v1", max_retries=0,
        http_client=httpx.Client(transport=_cutting_transport(["Paris ", "is ", "the"])),
    )  # fmt: skip
    monkeypatch.setattr(client, "_build_client", lambda _model: sdk)
    deltas: list[str] = []
    result = complete_with_retries(
        client, model=model, prompt="Where?", max_tokens=50, policy=NO_WAIT, sleep=lambda _: None,
        on_delta=deltas.append,
    )  # fmt: skip
    client.close()
    assert deltas == ["Paris ", "is ", "the"]
    assert isinstance(result.error, StreamInterrupted) and result.completion is None
    [attempt] = result.attempts  # never retried: its tokens were out
    assert (attempt.outcome, attempt.error_class) == ("error", "stream_cut")
    # No usage came: counted with the simulator's rule.
    assert attempt.completion_tokens == 3 and attempt.prompt_tokens == token_count.count_prompt_tokens(["Where?"])
    assert attempt.cost == model.cost(attempt.prompt_tokens, 3) > 0


def test_a_stream_cut_before_its_first_token_is_a_transient_error(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = OpenAIChatClient(make_test_settings(f"sqlite:///{tmp_path}/r.db"))
    model = catalog.get_model(CHEAP)
    sdk = openai.OpenAI(
        api_key="k", base_url="http://upstream.test/v1", max_retries=0,
        http_client=httpx.Client(transport=_cutting_transport([])),
    )  # fmt: skip
    monkeypatch.setattr(client, "_build_client", lambda _model: sdk)
    with pytest.raises(TransientLLMError):
        client.stream(model=model, prompt="Where?", max_tokens=50, on_delta=lambda _: None)
    client.close()


def test_a_caller_leaving_closes_the_upstream_stream_and_is_charged_the_calls_bound(
    client: OpenAIChatClient, sim: SimServer, catalog: Catalog
) -> None:
    sim.configure(latency_ms=3000)  # the whole answer takes 3 s to arrive
    model = catalog.get_model(CHEAP)
    seen: list[str] = []

    def on_delta(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:
            raise CallerGone("nobody reads")

    started = time.monotonic()
    result = complete_with_retries(
        client, model=model, prompt="Tell me about Paris.", max_tokens=300, policy=NO_WAIT, sleep=lambda _: None,
        on_delta=on_delta,
    )  # fmt: skip
    assert time.monotonic() - started < 1.5  # the upstream stream was closed, not read to its end
    assert isinstance(result.error, StreamCancelled) and result.completion is None
    assert result.error.code == "cancelled"
    [attempt] = result.attempts  # never retried
    assert (attempt.outcome, attempt.error_class) == ("unconfirmed", "cancelled")
    # No usage came: the call is charged at its bound, the prompt's and the max_tokens sent.
    received = "".join(seen)
    assert result.error.partial.text == received
    assert attempt.prompt_tokens == call_bound.prompt_tokens_bound(prompt="Tell me about Paris.")
    assert attempt.completion_tokens == 300
    assert attempt.cost == model.cost(attempt.prompt_tokens, attempt.completion_tokens)
