"""The real OpenAIChatClient over HTTP against the simulator, through the one retry layer."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from shared.config import Settings
from shared.errors import PermanentLLMError
from shared.errors import TransientLLMError
from shared.routing.catalog import Catalog
from shared.routing.catalog import ModelSpec
from shared.upstream.llm_client import POOL_SHARDS
from shared.upstream.llm_client import CallResult
from shared.upstream.llm_client import OpenAIChatClient
from shared.upstream.llm_client import RetryPolicy
from shared.upstream.llm_client import complete_with_retries
from tests.conftest import make_test_settings
from tests.support.sim import SimServer
from tests.support.sim import running_sim

PROMPT = "What is the capital of France?"
CHEAP = "gpt-3.5-turbo"
SETTINGS_KEY = "sk-settings-key-0123456789"
PRIVATE_KEY = "sk-private-key-9876543210"
PRIVATE_KEY_ENV = "PRIVATE_UPSTREAM_KEY"
# Long enough for a local answer, short enough that a hung "timeout" fault costs a fraction of a second.
SHORT_READ_TIMEOUT_S = 0.3


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with running_sim() as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


def _settings(tmp_path: Path, base_url: str, **overrides: object) -> Settings:
    return make_test_settings(
        f"sqlite:///{tmp_path}/router.db", openai_base_url=base_url, openai_api_key=SETTINGS_KEY, **overrides
    )


def _call(
    client: OpenAIChatClient,
    model: ModelSpec,
    *,
    sleeps: list[float],
    policy: RetryPolicy | None = None,
    max_tokens: int = 200,
) -> CallResult:
    return complete_with_retries(
        client,
        model=model,
        prompt=PROMPT,
        max_tokens=max_tokens,
        policy=policy or RetryPolicy(max_attempts=3, backoff_initial_s=0, backoff_max_s=0),
        sleep=sleeps.append,
    )


_open_clients: list[OpenAIChatClient] = []


def _client(settings: Settings) -> OpenAIChatClient:
    client = OpenAIChatClient(settings)
    _open_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_success_returns_text_usage_and_logprobs(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    client = _client(_settings(tmp_path, sim.base_url))
    result = _call(client, catalog.get_model(CHEAP), sleeps=sleeps)
    completion = result.completion
    assert completion is not None and result.error is None
    billed = sim.stats()[CHEAP]
    assert completion.text.strip()
    assert completion.finish_reason == "stop"
    assert (completion.prompt_tokens, completion.completion_tokens) == (
        billed["prompt_tokens"],
        billed["completion_tokens"],
    )
    assert completion.prompt_tokens > 0 and completion.completion_tokens > 0
    # The catalog says gpt-3.5-turbo supports logprobs, so the client asks for them: one per answer token.
    assert completion.logprobs is not None
    assert len(completion.logprobs) == completion.completion_tokens
    assert all(logprob <= 0 for logprob in completion.logprobs)
    assert sleeps == []


def test_success_records_one_ok_attempt_costed_from_the_usage(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    model = catalog.get_model(CHEAP)
    result = _call(_client(_settings(tmp_path, sim.base_url)), model, sleeps=sleeps)
    billed = sim.stats()[CHEAP]
    [attempt] = result.attempts
    assert (attempt.model, attempt.tier, attempt.outcome, attempt.error_class) == (CHEAP, "cheap", "ok", None)
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (billed["prompt_tokens"], billed["completion_tokens"])
    assert isinstance(attempt.cost, Decimal)
    assert attempt.cost == model.cost(billed["prompt_tokens"], billed["completion_tokens"])
    assert attempt.cost > 0
    assert result.retry_count == 0
    assert sim.calls() == 1


def test_model_without_logprobs_support_gets_none(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    model = dataclasses.replace(catalog.get_model(CHEAP), supports_logprobs=False)
    result = _call(_client(_settings(tmp_path, sim.base_url)), model, sleeps=sleeps)
    assert result.completion is not None
    assert result.completion.logprobs is None


def test_429_is_retried_after_the_retry_after_header(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    sim.configure(fail_first="429:2", retry_after_s=0.25)
    result = _call(_client(_settings(tmp_path, sim.base_url)), catalog.get_model(CHEAP), sleeps=sleeps)
    assert result.completion is not None
    assert [(a.outcome, a.status_code, a.error_class) for a in result.attempts] == [
        ("error", 429, "rate_limited"),
        ("error", 429, "rate_limited"),
        ("ok", None, None),
    ]
    assert sleeps == [0.25, 0.25]
    assert result.retry_count == 2
    assert sim.stats()[CHEAP]["calls"] == 3
    assert sim.stats()[CHEAP]["faults"] == 2


def test_huge_retry_after_is_capped(sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]) -> None:
    sim.configure(fail_first="429:1", retry_after_s=3600)
    policy = RetryPolicy(max_attempts=2, backoff_initial_s=0, backoff_max_s=0, retry_after_cap_s=1.5)
    result = _call(_client(_settings(tmp_path, sim.base_url)), catalog.get_model(CHEAP), sleeps=sleeps, policy=policy)
    assert result.completion is not None
    assert sleeps == [1.5]
    assert sim.calls() == 2


def test_500_is_retried_with_backoff(sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]) -> None:
    sim.configure(fail_first="500:1")
    # A 500 carries no Retry-After, so the wait is the policy's jittered backoff: initial + up to initial.
    policy = RetryPolicy(max_attempts=3, backoff_initial_s=0.5, backoff_max_s=8)
    result = _call(_client(_settings(tmp_path, sim.base_url)), catalog.get_model(CHEAP), sleeps=sleeps, policy=policy)
    assert result.completion is not None
    assert [(a.outcome, a.status_code, a.error_class) for a in result.attempts] == [
        ("error", 500, "server_error"),
        ("ok", None, None),
    ]
    assert len(sleeps) == 1
    assert 0.5 <= sleeps[0] <= 1.0
    assert sim.calls() == 2


def test_timeout_is_retried_and_classified_timeout(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    sim.configure(fail_first="timeout:1", timeout_hang_s=1)
    settings = _settings(tmp_path, sim.base_url, upstream_read_timeout_s=SHORT_READ_TIMEOUT_S)
    result = _call(_client(settings), catalog.get_model(CHEAP), sleeps=sleeps)
    assert result.completion is not None
    first, second = result.attempts
    assert (first.outcome, first.error_class, first.status_code) == ("error", "timeout", None)
    # The client gave up at its read timeout (give or take timer slack), not after the server's 1 s hang.
    assert SHORT_READ_TIMEOUT_S * 900 <= first.latency_ms < 1000
    assert second.outcome == "ok"
    assert sim.calls() == 2


@pytest.mark.parametrize(
    ("model_name", "max_tokens", "status"),
    [
        pytest.param("gpt-unknown-to-upstream", 200, 404, id="unknown-model-404"),
        pytest.param(CHEAP, 0, 400, id="bad-max-tokens-400"),
    ],
)
def test_4xx_is_not_retried(
    sim: SimServer,
    catalog: Catalog,
    tmp_path: Path,
    sleeps: list[float],
    model_name: str,
    max_tokens: int,
    status: int,
) -> None:
    model = dataclasses.replace(catalog.get_model(CHEAP), name=model_name)
    result = _call(_client(_settings(tmp_path, sim.base_url)), model, sleeps=sleeps, max_tokens=max_tokens)
    assert result.completion is None
    assert isinstance(result.error, PermanentLLMError)
    assert result.error.status_code == status
    [attempt] = result.attempts
    assert (attempt.outcome, attempt.status_code, attempt.error_class) == ("error", status, "rejected")
    assert sleeps == []
    # Rejected before the simulator counts a call.
    assert sim.calls() == 0


def test_exhausted_attempts_return_the_last_transient_error(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    sim.configure(faults="503=1.0", retry_after_s=0.5)
    policy = RetryPolicy(max_attempts=4, backoff_initial_s=0, backoff_max_s=0)
    result = _call(_client(_settings(tmp_path, sim.base_url)), catalog.get_model(CHEAP), sleeps=sleeps, policy=policy)
    assert result.completion is None
    assert isinstance(result.error, TransientLLMError)
    assert result.error.status_code == 503
    assert [(a.outcome, a.status_code) for a in result.attempts] == [("error", 503)] * 4
    assert result.retry_count == 3
    # No sleep after the last attempt: the result comes back at once.
    assert sleeps == [0.5, 0.5, 0.5]
    assert sim.stats()[CHEAP]["calls"] == 4
    assert sim.stats()[CHEAP]["faults"] == 4


def test_connection_refused_is_transient_connection_error(
    catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    settings = _settings(tmp_path, f"http://127.0.0.1:{_closed_port()}/v1")
    result = _call(_client(settings), catalog.get_model(CHEAP), sleeps=sleeps, policy=RetryPolicy(max_attempts=2))
    assert isinstance(result.error, TransientLLMError)
    assert result.error.details["error_class"] == "connection"
    assert [(a.error_class, a.status_code) for a in result.attempts] == [("connection", None)] * 2


def test_a_servers_calls_take_turns_over_a_few_reused_sdk_clients(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(_settings(tmp_path, sim.base_url))
    built: list[openai.OpenAI] = []
    build = client._build_client
    monkeypatch.setattr(client, "_build_client", lambda model: built.append(build(model)) or built[-1])
    for model in [catalog.get_model(CHEAP), catalog.get_model("gpt-4")] * POOL_SHARDS:
        _call(client, model, sleeps=sleeps)
    # Both models live on the one server: its calls took turns over POOL_SHARDS clients, each built once.
    assert len(built) == len(set(map(id, built))) == POOL_SHARDS
    assert sim.calls() == 2 * POOL_SHARDS


def test_models_on_different_servers_get_different_sdk_clients(
    sim: SimServer, catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    client = _client(_settings(tmp_path, sim.base_url))
    with running_sim() as other:
        elsewhere = dataclasses.replace(catalog.get_model("gpt-4"), base_url=other.base_url)
        _call(client, catalog.get_model(CHEAP), sleeps=sleeps)
        _call(client, elsewhere, sleeps=sleeps)
        assert len({id(sdk) for sdk in client._clients.values()}) == 2
        assert (sim.calls(), other.calls()) == (1, 1)


@pytest.fixture
def private_sim() -> Iterator[SimServer]:
    """A second upstream that demands its own key."""
    with running_sim(api_key=PRIVATE_KEY) as server:
        yield server


def _private_model(catalog: Catalog, private_sim: SimServer) -> ModelSpec:
    return dataclasses.replace(catalog.get_model("gpt-4"), base_url=private_sim.base_url, api_key_env=PRIVATE_KEY_ENV)


def test_model_with_own_server_uses_its_key_from_the_environment(
    sim: SimServer,
    private_sim: SimServer,
    catalog: Catalog,
    tmp_path: Path,
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PRIVATE_KEY_ENV, PRIVATE_KEY)
    client = _client(_settings(tmp_path, sim.base_url))
    result = _call(client, _private_model(catalog, private_sim), sleeps=sleeps)
    assert result.completion is not None
    assert private_sim.calls("gpt-4") == 1
    assert sim.calls() == 0


@pytest.mark.parametrize("sent_key", [None, "sk-wrong-key-5555"], ids=["unset", "wrong"])
def test_model_with_own_server_and_a_bad_key_is_rejected_once(
    private_sim: SimServer,
    catalog: Catalog,
    tmp_path: Path,
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
    sent_key: str | None,
) -> None:
    if sent_key is None:
        monkeypatch.delenv(PRIVATE_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(PRIVATE_KEY_ENV, sent_key)
    # The default upstream is a closed port: the model must not fall back to it.
    client = _client(_settings(tmp_path, f"http://127.0.0.1:{_closed_port()}/v1"))
    result = _call(client, _private_model(catalog, private_sim), sleeps=sleeps)
    assert isinstance(result.error, PermanentLLMError)
    assert result.error.status_code == 401
    assert len(result.attempts) == 1
    # Authentication fails before the simulator counts a call.
    assert private_sim.calls() == 0


def test_default_key_is_not_sent_to_a_model_with_its_own_key_variable(
    catalog: Catalog, tmp_path: Path, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PRIVATE_KEY_ENV, raising=False)
    with running_sim(api_key=SETTINGS_KEY) as server:
        client = _client(_settings(tmp_path, server.base_url))
        own = dataclasses.replace(catalog.get_model("gpt-4"), api_key_env=PRIVATE_KEY_ENV)
        rejected = _call(client, own, sleeps=sleeps)
        accepted = _call(client, catalog.get_model(CHEAP), sleeps=sleeps)
    assert isinstance(rejected.error, PermanentLLMError)
    assert rejected.error.status_code == 401
    assert accepted.completion is not None


def test_default_key_is_not_sent_to_a_model_on_its_own_server(
    catalog: Catalog, tmp_path: Path, sleeps: list[float]
) -> None:
    with running_sim(api_key=SETTINGS_KEY) as server:
        client = _client(_settings(tmp_path, server.base_url))
        own_server = dataclasses.replace(catalog.get_model("gpt-4"), base_url=server.base_url)
        rejected = _call(client, own_server, sleeps=sleeps)
    assert isinstance(rejected.error, PermanentLLMError)
    assert rejected.error.status_code == 401


@pytest.mark.parametrize("server_key", [PRIVATE_KEY, None], ids=["key-rejected", "no-key-needed-but-down"])
def test_upstream_keys_never_appear_in_errors(
    catalog: Catalog,
    tmp_path: Path,
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
    server_key: str | None,
) -> None:
    monkeypatch.setenv(PRIVATE_KEY_ENV, "sk-leaky-key-4242")
    with running_sim(api_key=server_key, fail_first=("500", 9)) as server:
        default = catalog.get_model(CHEAP)
        own = dataclasses.replace(catalog.get_model("gpt-4"), api_key_env=PRIVATE_KEY_ENV)
        client = _client(_settings(tmp_path, server.base_url))
        errors = [_call(client, model, sleeps=sleeps).error for model in (default, own)]
    for error in errors:
        assert error is not None
        shown = " ".join([str(error), repr(error), error.message, repr(error.details)])
        for key in (SETTINGS_KEY, "sk-leaky-key-4242"):
            assert key not in shown
