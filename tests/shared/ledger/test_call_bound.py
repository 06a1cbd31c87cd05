"""The call bound: it covers what the simulator and OpenAI's published rule bill, for every request shape."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from shared.devstack.simulator.app import _parse_chat_request
from shared.ledger import call_bound
from shared.routing.catalog import Catalog
from shared.store.types import utcnow
from shared.upstream import token_count
from shared.upstream.attempts import AttemptRecord
from web.api.chat import job_request
from web.schemas import ChatCompletionRequest

# Text of every kind a request may carry: empty, whitespace, punctuation runs, and multi-byte characters
# (accents, CJK, emoji, combining marks) that byte-level tokenizers split into several tokens.
TEXT = st.one_of(
    st.just(""),
    st.text(alphabet=" \n\t", max_size=5),
    st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40),
    st.text(alphabet="{}[]\":,.!?-_/\\'`~@#$%^&*()+=<>|;", max_size=30),
    st.text(alphabet="é漢字🙂\u0301ß", max_size=20),
)
ROLE = st.sampled_from(["system", "developer", "user", "assistant"])


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    """An OpenAI chat request as a client sends it to /v1/chat/completions."""
    messages = []
    for _ in range(draw(st.integers(min_value=1, max_value=60))):
        message: dict[str, Any] = {"role": draw(ROLE), "content": draw(TEXT)}
        if draw(st.booleans()):
            message["content"] = [{"type": "text", "text": draw(TEXT)} for _ in range(draw(st.integers(0, 3)))]
        if draw(st.booleans()):
            message["name"] = draw(st.text(alphabet="abcXYZ_-01", min_size=1, max_size=12))
        messages.append(message)
    messages.append({"role": "user", "content": draw(TEXT) + "x"})  # the API wants some text
    body: dict[str, Any] = {"model": "gpt-4", "messages": messages, "max_tokens": draw(st.integers(1, 4096))}
    stop = draw(st.one_of(st.none(), TEXT.filter(bool), st.lists(TEXT.filter(bool), min_size=1, max_size=4)))
    if stop is not None:
        body["stop"] = stop
    return body


def _sent(prompt: str, messages: list[dict[str, Any]] | None, options: dict[str, Any] | None, max_tokens: int):
    """The body shared.upstream.llm_client sends upstream for this request."""
    return {"model": "gpt-4", "messages": call_bound.sent_messages(prompt, messages), "max_tokens": max_tokens,
            **(options or {})}  # fmt: skip


def _simulator_bill(body: dict[str, Any]) -> int:
    """The prompt tokens the simulator bills for `body` (its handler's own parsing and counting)."""
    return token_count.count_prompt_tokens(_parse_chat_request(body).contents)


def _openai_published_rule(body: dict[str, Any]) -> int:
    """OpenAI's num_tokens_from_messages, at its largest constants (4 per message, 1 per name, 3 per reply),
    with the most tokens any byte-level BPE can make of a text: one per UTF-8 byte."""
    count = 3
    for message in body["messages"]:
        count += 4
        for key, value in message.items():
            count += len(str(value).encode("utf-8")) + (1 if key == "name" else 0)
    return count


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests())
def test_the_bound_covers_the_simulator_and_openai_for_any_chat_the_api_accepts(
    catalog: Catalog, raw: dict[str, Any]
) -> None:
    request = job_request(ChatCompletionRequest.model_validate(raw), catalog=catalog, max_prompt_chars=10**9)
    call = call_bound.call_bound(
        prompt=request.prompt, max_tokens=request.max_tokens, messages=request.messages, options=request.options
    )
    sent = _sent(request.prompt, request.messages, request.options, request.max_tokens)
    assert call.prompt_tokens >= _simulator_bill(sent)
    assert call.prompt_tokens >= _openai_published_rule(sent)
    assert call.completion_tokens == request.max_tokens == raw["max_tokens"]


@settings(max_examples=200, deadline=None)
@given(prompt=TEXT.filter(str.strip), max_tokens=st.integers(1, 4096))
def test_the_bound_covers_a_single_prompt(prompt: str, max_tokens: int) -> None:
    call = call_bound.call_bound(prompt=prompt, max_tokens=max_tokens)
    sent = _sent(prompt, None, None, max_tokens)
    assert call.prompt_tokens >= max(_simulator_bill(sent), _openai_published_rule(sent))


@given(
    extra=st.dictionaries(
        st.sampled_from(["name", "tool_calls", "tool_call_id", "function_call"]),
        st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), TEXT), lambda inner: st.lists(inner)),
        min_size=1,
    )
)
def test_any_field_a_message_carries_counts_every_text_in_it(extra: dict[str, Any]) -> None:
    """Names, tool calls and their results: whatever a stored message carries, each text in it is counted."""
    plain = call_bound.prompt_tokens_bound(prompt="", messages=[{"role": "assistant", "content": "hi"}])
    carried = call_bound.prompt_tokens_bound(prompt="", messages=[{"role": "assistant", "content": "hi", **extra}])

    def texts(value: object) -> int:
        if isinstance(value, str):
            return len(value.encode())
        return sum(texts(item) for item in value) if isinstance(value, list) else 0

    assert carried - plain >= texts(list(extra.values()))


def test_empty_messages_are_each_billed_their_overhead() -> None:
    """The case that overspent: 15,000 empty turns and "hi" are billed 60,008 tokens by the simulator."""
    messages = [{"role": "user", "content": ""}] * 15_000 + [{"role": "user", "content": "hi"}]
    sent = _sent("", messages, None, 1)
    assert _simulator_bill(sent) == 15_001 * token_count.TOKENS_PER_MESSAGE + 1 + token_count.TOKENS_PER_REPLY
    call = call_bound.call_bound(prompt="\n" * 15_000 + "hi", max_tokens=1, messages=messages)
    assert call.prompt_tokens >= _simulator_bill(sent)


def test_the_overhead_constants_cover_the_published_rules() -> None:
    assert max(token_count.TOKENS_PER_MESSAGE, 4 + 1) <= call_bound.TOKENS_PER_MESSAGE  # simulator; OpenAI + a name
    assert call_bound.TOKENS_PER_REQUEST >= token_count.TOKENS_PER_REPLY


def test_stop_sequences_count() -> None:
    plain = call_bound.prompt_tokens_bound(prompt="hi")
    assert call_bound.prompt_tokens_bound(prompt="hi", options={"stop": "END"}) == plain + 3
    assert call_bound.prompt_tokens_bound(prompt="hi", options={"stop": ["é", "\n\n"], "temperature": 0.5}) == plain + 4


def _record(prompt_tokens: int, completion_tokens: int, model: str = "gpt-4") -> AttemptRecord:
    return AttemptRecord(
        model=model, tier="mid", outcome="ok", latency_ms=1.0, started_at=utcnow(),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
    )  # fmt: skip


def test_usage_over_bound_is_any_attempt_over_its_tokens_or_a_cost_over_the_reservation() -> None:
    call = call_bound.CallBound(prompt_tokens=100, completion_tokens=50)
    within = [_record(100, 50), _record(3, 0)]
    assert call_bound.usage_over_bound(call, within, cost=Decimal(1), reserved=Decimal(1)) is None
    over = call_bound.usage_over_bound(call, [_record(1, 1), _record(101, 0, "gpt-4-turbo")], cost=Decimal(0),
                                   reserved=Decimal(1))  # fmt: skip
    assert over is not None and over.model == "gpt-4-turbo" and len(over.attempts) == 1
    assert call_bound.usage_over_bound(call, [_record(1, 51)], cost=Decimal(0), reserved=Decimal(1)) is not None
    total = call_bound.usage_over_bound(call, within, cost=Decimal("1.000000001"), reserved=Decimal(1))
    assert total is not None and total.model is None
