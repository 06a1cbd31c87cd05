"""The simulator over real HTTP, driven by the real `openai` client the router uses."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest
from aiohttp import web

from shared.devstack.simulator.app import create_sim_app
from shared.devstack.simulator.sim_settings import SimSettings
from shared.routing.catalog import Catalog
from shared.routing.catalog import ModelSpec
from shared.upstream.token_count import count_tokens

CHEAP = "cheap-model"
MID = "mid-model"
STRONG = "strong-model"
NO_LOGPROBS = "plain-model"
PROMPTS = (
    "What is the capital of France?",
    "Explain how a binary search works.",
    "Write a haiku about autumn leaves.",
    "Summarize the causes of the French Revolution in a few sentences.",
)


def _catalog() -> Catalog:
    price = Decimal("0.001")
    models = (
        ModelSpec(name=CHEAP, tier="cheap", input_per_1k=price, output_per_1k=price),
        ModelSpec(name=MID, tier="mid", input_per_1k=price, output_per_1k=price),
        ModelSpec(name=STRONG, tier="high", input_per_1k=price, output_per_1k=price),
        ModelSpec(name=NO_LOGPROBS, tier="mid", input_per_1k=price, output_per_1k=price, supports_logprobs=False),
    )
    return Catalog(tiers=("cheap", "mid", "high"), models=models)


class RunningSim:
    """A simulator served on a loopback port from its own event loop in a background thread."""

    def __init__(self, settings: SimSettings) -> None:
        self.app = create_sim_app(catalog=_catalog(), settings=settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)

    async def _start(self) -> None:
        # A short shutdown timeout: a hung "timeout" fault must not hold up teardown.
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def _stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def request(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one raw HTTP request; return status, headers and body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            connection.request(
                method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})}
            )
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, _, raw = self.request(method, path, body, **kwargs)
        assert status == 200, raw
        return json.loads(raw)


@dataclass
class Sim:
    server: RunningSim
    client: openai.OpenAI

    def ask(self, prompt: str, *, model: str = CHEAP, **kwargs: Any) -> Any:
        return self.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], **kwargs
        )

    def configure(self, **values: Any) -> dict[str, Any]:
        return self.server.json("POST", "/sim/config", values)

    def stats(self, model: str = CHEAP) -> dict[str, int]:
        return self.server.json("GET", "/sim/stats")["models"][model]


@pytest.fixture
def start_sim() -> Iterator[Callable[..., Sim]]:
    started: list[Sim] = []

    def start(**settings: Any) -> Sim:
        server = RunningSim(SimSettings(**settings))
        server.start()
        sim = Sim(server=server, client=openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0))
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.client.close()
        sim.server.stop()


@pytest.fixture
def sim(start_sim: Callable[..., Sim]) -> Sim:
    return start_sim()


def _mean_logprob(completion: Any) -> float:
    entries = completion.choices[0].logprobs.content
    return sum(entry.logprob for entry in entries) / len(entries)


def test_answers_are_deterministic_for_a_seed(start_sim: Callable[..., Sim]) -> None:
    first = start_sim(seed=7)
    second = start_sim(seed=7)
    other = start_sim(seed=8)
    for prompt in PROMPTS:
        text = first.ask(prompt).choices[0].message.content
        assert first.ask(prompt).choices[0].message.content == text
        assert second.ask(prompt).choices[0].message.content == text
    assert [other.ask(p).choices[0].message.content for p in PROMPTS] != [
        first.ask(p).choices[0].message.content for p in PROMPTS
    ]


def test_stronger_tiers_answer_longer_and_surer(sim: Sim) -> None:
    for prompt in PROMPTS:
        answers = [sim.ask(prompt, model=model, logprobs=True) for model in (CHEAP, MID, STRONG)]
        lengths = [answer.usage.completion_tokens for answer in answers]
        assert lengths == sorted(lengths) and len(set(lengths)) == 3, lengths
        assert 30 <= lengths[0] <= 110 and 120 <= lengths[2] <= 280, lengths
        assert _mean_logprob(answers[0]) < _mean_logprob(answers[2])


def test_usage_matches_the_text_and_stays_under_the_byte_bound(sim: Sim) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Ünïcödé — 日本語のテキスト, emoji 🎉🎉 and don't-stop punctuation!!"},
        {"role": "assistant", "content": "   "},
        {"role": "user", "content": ""},
    ]
    completion = sim.client.chat.completions.create(model=MID, messages=messages)
    usage = completion.usage
    contents = [m["content"] for m in messages]
    assert usage.completion_tokens == count_tokens(completion.choices[0].message.content)
    assert usage.prompt_tokens == sum(count_tokens(c) + 4 for c in contents) + 3
    assert usage.prompt_tokens <= sum(len(c.encode()) + 4 for c in contents) + 3
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == MID


def test_max_tokens_truncates_with_finish_reason_length(sim: Sim) -> None:
    full = sim.ask(PROMPTS[1], model=STRONG)
    cut = sim.ask(PROMPTS[1], model=STRONG, max_tokens=10)
    newer = sim.ask(PROMPTS[1], model=STRONG, max_completion_tokens=10)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 10 == count_tokens(cut.choices[0].message.content)
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    assert newer.choices[0].message.content == cut.choices[0].message.content
    roomy = sim.ask(PROMPTS[1], model=STRONG, max_tokens=full.usage.completion_tokens)
    assert roomy.choices[0].finish_reason == "stop"


def test_rate_limit_fault_answers_429_with_retry_after(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(faults={"429": 1.0}, retry_after_s=2.5)
    with pytest.raises(openai.RateLimitError) as caught:
        sim.ask("hello")
    assert caught.value.response.headers["retry-after"] == "2.5"
    assert caught.value.body["type"] == "rate_limit_exceeded"


def test_fail_first_fails_exactly_the_first_calls_of_each_prompt(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(fail_first=("429", 2))
    for prompt in ("one", "two"):
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                sim.ask(prompt)
        assert sim.ask(prompt).choices[0].message.content
    # The count is per model too: another model's first calls fail on their own.
    with pytest.raises(openai.RateLimitError):
        sim.ask("one", model=MID)


def test_down_model_always_answers_503(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(down=frozenset({MID}))
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as caught:
            sim.ask("hello", model=MID)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1"
    assert sim.ask("hello", model=CHEAP).choices[0].message.content


def test_server_error_faults_answer_their_status(start_sim: Callable[..., Sim]) -> None:
    for kind in ("500", "502"):
        sim = start_sim(faults={kind: 1.0})
        with pytest.raises(openai.InternalServerError) as caught:
            sim.ask("hello")
        assert caught.value.status_code == int(kind)
        assert "retry-after" not in caught.value.response.headers


def test_timeout_fault_hangs_then_answers_504(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(faults={"timeout": 1.0}, timeout_hang_s=0.3)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sim.ask("hello")
    assert caught.value.status_code == 504
    assert time.monotonic() - started >= 0.3
    # A client that gives up first sees a timeout, as it would with a real hung upstream.
    with pytest.raises(openai.APITimeoutError):
        sim.ask("hello", timeout=0.1)


def test_fault_draws_follow_the_shares_and_ignore_other_prompts(start_sim: Callable[..., Sim]) -> None:
    settings = {"faults": {"429": 0.3}, "seed": 3}
    first = start_sim(**settings)
    second = start_sim(**settings)

    def outcomes(sim: Sim, prompts: list[str]) -> dict[str, bool]:
        status = {}
        for prompt in prompts:
            code, _, _ = sim.server.request(
                "POST",
                "/v1/chat/completions",
                {"model": CHEAP, "messages": [{"role": "user", "content": prompt}]},
            )
            status[prompt] = code == 429
        return status

    prompts = [f"question {i}" for i in range(200)]
    failed = outcomes(first, prompts)
    assert 35 <= sum(failed.values()) <= 85
    # A different order, with other traffic interleaved, gives every prompt the same outcome.
    interleaved = [p for prompt in reversed(prompts) for p in (prompt, "noise " + prompt)]
    assert {p: v for p, v in outcomes(second, interleaved).items() if not p.startswith("noise")} == failed


def test_x_sim_header_overlays_the_settings_for_one_request(sim: Sim) -> None:
    with pytest.raises(openai.RateLimitError):
        sim.ask("hello", extra_headers={"X-Sim": "latency_ms=0;faults=429=1.0,500=0"})
    assert sim.ask("hello").choices[0].message.content
    started = time.monotonic()
    sim.ask("hello", extra_headers={"X-Sim": "SIM_LATENCY_MS=150"})
    assert time.monotonic() - started >= 0.15
    seeded = sim.ask("hello", extra_headers={"X-Sim": "seed=99"}).choices[0].message.content
    assert seeded != sim.ask("hello").choices[0].message.content


@pytest.mark.parametrize("header", ["latency_ms=fast", "faults=429=2", "nonsense=1", "api_key=open", "no-equals"])
def test_bad_x_sim_header_answers_400(sim: Sim, header: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sim.ask("hello", extra_headers={"X-Sim": header})
    assert caught.value.body["param"] == "X-Sim"


def test_unknown_model_answers_404(sim: Sim) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sim.ask("hello", model="gpt-unknown")
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        ({"model": CHEAP}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": CHEAP, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": CHEAP, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": CHEAP, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": CHEAP, "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"model": CHEAP, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_bad_body_answers_400_in_openai_shape(sim: Sim, body: Any, param: str | None) -> None:
    status, _, raw = sim.server.request("POST", "/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"] and "code" in error
    assert sim.stats()["calls"] == 0


def test_extra_fields_and_text_parts_are_accepted(sim: Sim) -> None:
    body = {
        "model": CHEAP,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}], "name": "ann"}],
        "user": "someone",
        "seed": 4,
        "stop": None,
    }
    status, _, raw = sim.server.request("POST", "/v1/chat/completions", body)
    assert status == 200, raw


def test_stream_yields_the_same_text_and_usage_and_ends_with_done(sim: Sim) -> None:
    plain = sim.ask(PROMPTS[3], model=MID)
    stream = sim.ask(PROMPTS[3], model=MID, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    with stream:
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == "stop"
    assert usage == plain.usage

    body = {"model": MID, "messages": [{"role": "user", "content": PROMPTS[3]}], "stream": True}
    status, headers, raw = sim.server.request("POST", "/v1/chat/completions", body)
    events = raw.decode().split("\n\n")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
    # Without include_usage no chunk carries usage.
    assert all("usage" not in json.loads(e.removeprefix("data: ")) for e in events[:-2])


def test_stream_waits_ttft_then_spreads_the_rest_over_the_latency(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(ttft_ms=150, latency_ms=400)
    started = time.monotonic()
    stream = sim.ask(PROMPTS[0], model=STRONG, stream=True)
    with stream:
        chunks = iter(stream)
        next(chunks)
        first = time.monotonic() - started
        for _ in chunks:
            pass
    total = time.monotonic() - started
    assert first >= 0.15
    assert total >= 0.4
    # The rest really is spread out (0.25 s after the first chunk), not sent with it.
    assert total - first >= 0.15


def test_a_stream_pauses_after_its_first_token_and_then_sends_the_rest(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(pause_ms=400)
    started = time.monotonic()
    stream = sim.ask(PROMPTS[0], model=STRONG, stream=True)
    with stream:
        chunks = iter(stream)
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = list(chunks)
    total = time.monotonic() - started
    assert first.choices[0].delta.content and first_at < 0.3
    assert total - first_at >= 0.4
    assert rest[-1].choices[0].finish_reason in ("stop", "length")


def test_a_client_leaving_mid_stream_is_not_a_server_error(
    start_sim: Callable[..., Sim], caplog: pytest.LogCaptureFixture
) -> None:
    sim = start_sim(latency_ms=300)
    stream = sim.ask(PROMPTS[0], model=STRONG, stream=True)
    with stream:
        next(iter(stream))
    time.sleep(0.4)
    assert sim.ask("still there?").choices[0].message.content
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_stream_its_client_leaves_is_billed_for_the_tokens_sent_only(start_sim: Callable[..., Sim]) -> None:
    whole = start_sim().ask(PROMPTS[0], model=STRONG, max_tokens=400).usage.completion_tokens
    sim = start_sim(latency_ms=2000)
    stream = sim.ask(PROMPTS[0], model=STRONG, stream=True, max_tokens=400)
    with stream:
        next(iter(stream))
    time.sleep(2.5)  # the server's next writes find the client gone
    billed = sim.stats(STRONG)["completion_tokens"]
    assert 1 <= billed < whole / 2


def test_faults_on_a_stream_answer_the_status_before_streaming(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(fail_first=("503", 1))
    with pytest.raises(openai.InternalServerError) as caught:
        sim.ask("hello", stream=True)
    assert caught.value.status_code == 503


def test_logprobs_are_present_when_asked_and_lower_for_hedges(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(fail_first=("hedge", 1))
    hedge = sim.ask(PROMPTS[1], model=STRONG, logprobs=True, top_logprobs=2)
    sure = sim.ask(PROMPTS[1], model=STRONG, logprobs=True, top_logprobs=2)
    text = hedge.choices[0].message.content
    assert "I'm not sure" in text or "I don't know" in text
    assert hedge.usage.completion_tokens < 12
    assert _mean_logprob(hedge) < _mean_logprob(sure)
    entries = sure.choices[0].logprobs.content
    assert len(entries) == sure.usage.completion_tokens
    assert "".join(entry.token for entry in entries) == sure.choices[0].message.content
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in entries)
    assert entries[0].bytes == list(entries[0].token.encode())
    assert sim.ask(PROMPTS[1], model=STRONG).choices[0].logprobs is None
    assert sim.ask(PROMPTS[1], model=NO_LOGPROBS, logprobs=True).choices[0].logprobs is None


def test_stats_count_calls_faults_and_billed_tokens_until_reset(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(fail_first=("429", 1))
    with pytest.raises(openai.RateLimitError):
        sim.ask("hello")
    answer = sim.ask("hello")
    sim.ask("hello", extra_headers={"X-Sim": "faults=hedge=1"})
    hedge = sim.server.json("GET", "/sim/stats")["models"][CHEAP]
    assert hedge["calls"] == 3 and hedge["faults"] == 1
    assert hedge["prompt_tokens"] == 2 * answer.usage.prompt_tokens
    assert hedge["completion_tokens"] > answer.usage.completion_tokens
    assert sim.stats(STRONG) == {"calls": 0, "faults": 0, "throttled": 0, "prompt_tokens": 0, "completion_tokens": 0}

    assert sim.server.request("POST", "/sim/reset")[0] == 200
    assert sim.stats() == {"calls": 0, "faults": 0, "throttled": 0, "prompt_tokens": 0, "completion_tokens": 0}
    # The reset also restarts the per-prompt count, so fail_first applies again.
    with pytest.raises(openai.RateLimitError):
        sim.ask("hello")


def test_config_replaces_the_settings_until_reset(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(latency_ms=5)
    now = sim.configure(faults="429=0.5", fail_first="500:1", down=MID, retry_after_s=3)
    assert now["faults"] == {"429": 0.5} and now["fail_first"] == "500:1" and now["down"] == [MID]
    assert now["latency_ms"] == 5
    with pytest.raises(openai.InternalServerError) as caught:
        sim.ask("hello", model=STRONG)
    assert caught.value.status_code == 500
    # fail_first comes before the down list; after it, the down model answers 503.
    statuses = []
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            sim.ask("hello", model=MID)
        statuses.append(caught.value.status_code)
    assert statuses == [500, 503]
    assert caught.value.response.headers["retry-after"] == "3"

    restored = sim.configure(reset=True)
    assert restored == sim.server.json("GET", "/sim/config")
    assert restored["faults"] == {} and restored["fail_first"] is None and restored["latency_ms"] == 5
    assert sim.ask("hello", model=MID).choices[0].message.content

    status, _, raw = sim.server.request("POST", "/sim/config", {"faults": "429=0.8,500=0.8"})
    assert status == 400 and b"at most 1" in raw
    status, _, _ = sim.server.request("POST", "/sim/config", {"latency": 5})
    assert status == 400


def test_config_restarts_the_per_prompt_count(sim: Sim) -> None:
    sim.ask("hello")
    sim.configure(fail_first="429:1")
    with pytest.raises(openai.RateLimitError):
        sim.ask("hello")
    assert sim.ask("hello").choices[0].message.content


def test_models_lists_the_catalog(sim: Sim) -> None:
    assert [model.id for model in sim.client.models.list()] == [CHEAP, MID, STRONG, NO_LOGPROBS]
    assert sim.client.models.retrieve(STRONG).id == STRONG


def test_api_key_is_required_when_set(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(api_key="secret")
    with pytest.raises(openai.AuthenticationError):
        sim.ask("hello")
    assert sim.server.request("GET", "/sim/stats")[0] == 401
    with openai.OpenAI(base_url=sim.server.base_url, api_key="secret", max_retries=0) as client:
        answer = client.chat.completions.create(model=CHEAP, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
