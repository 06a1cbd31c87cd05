"""The most one upstream call can be billed, computed from the request as it is sent, and the check of a bill.

Reservations (shared.ledger.budget.reservation_bound), the check before each attempt (shared.jobs.dispatch) and the
check of what the upstream reported (`usage_over_bound`, applied by both finish forms in shared.jobs.runs) all use the
one bound defined here.

Prompt tokens. Servers bill the text of every message plus a few formatting tokens per message and per
reply. OpenAI's published rule (the cookbook's `num_tokens_from_messages`): 3 tokens per message (4 for
gpt-3.5-turbo-0301), the tokens of each field's value (role, content, name), 1 more for a name, and 3 that
prime the reply. The simulator bills the tokens of each content, 4 per message and 3 per reply
(shared.upstream.token_count). Chat templates of open models (Llama 3: a header of two special tokens around the
role, a blank line, an end-of-turn token; one begin-of-text token) stay within the same constants.
The bound counts every field of every message at one token per UTF-8 byte (a byte-level BPE token covers at
least one byte, so no tokenizer of that family can count more; values that are not text, such as tool calls,
are counted as their JSON), adds TOKENS_PER_MESSAGE for each message and TOKENS_PER_REQUEST once, and counts
the stop sequences' bytes too (they are text the request carries, even where a server does not bill them).
The API accepts no tool or function definitions and no tool results (web.schemas ignores them), and the
router adds no system prompt: what is sent is the stored messages (or the prompt as one user turn) and the
options in shared.upstream.llm_client.PASSTHROUGH_OPTIONS.

Completion tokens. Every call is sent with `max_tokens`, the most the server may produce and bill.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.routing.catalog import ModelSpec
from shared.upstream.attempts import AttemptRecord

# Formatting tokens a server may bill per message beyond its fields' text: OpenAI's 3 or 4, plus 1 for a
# name; the simulator's 4; a Llama 3 header and end-of-turn, 4. Twice the largest, for servers not listed.
TOKENS_PER_MESSAGE = 8
# Tokens billed once per request: OpenAI's and the simulator's 3 that prime the reply; a template's
# begin-of-text token and the assistant header (which names the role, "assistant": at most 9 bytes).
TOKENS_PER_REQUEST = 16


def sent_messages(prompt: str, messages: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Return the messages a call sends: a chat's own turns, or the prompt as a single user turn."""
    return list(messages) if messages else [{"role": "user", "content": prompt}]


def _text_bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if value is None:
        return 0
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def prompt_tokens_bound(
    *, prompt: str, messages: Sequence[dict[str, Any]] | None = None, options: dict[str, Any] | None = None
) -> int:
    """Return a count of prompt tokens that no server in the module's description bills more than, for a
    call made of `prompt` or `messages` and `options` exactly as shared.upstream.llm_client sends them."""
    tokens = TOKENS_PER_REQUEST
    for message in sent_messages(prompt, messages):
        tokens += TOKENS_PER_MESSAGE + sum(_text_bytes(value) for value in message.values())
    stop = (options or {}).get("stop")
    for sequence in [stop] if isinstance(stop, str) else stop or []:
        tokens += _text_bytes(sequence)
    return tokens


@dataclass(frozen=True)
class CallBound:
    """The most one upstream call of a request can be billed: its prompt tokens and its completion tokens."""

    prompt_tokens: int
    completion_tokens: int

    def cost(self, model: ModelSpec) -> Decimal:
        """Return the worst-case cost of one call of the request to `model` (of one attempt, of a lost run)."""
        return model.cost(self.prompt_tokens, self.completion_tokens)

    def exceeded_by(self, record: AttemptRecord) -> bool:
        """Whether the upstream billed `record` for more tokens than this bound allows."""
        return record.prompt_tokens > self.prompt_tokens or record.completion_tokens > self.completion_tokens


def call_bound(
    *,
    prompt: str,
    max_tokens: int,
    messages: Sequence[dict[str, Any]] | None = None,
    options: dict[str, Any] | None = None,
) -> CallBound:
    """Return the bound of one call of a request: what every reservation and pre-call check is made of."""
    return CallBound(
        prompt_tokens=prompt_tokens_bound(prompt=prompt, messages=messages, options=options),
        completion_tokens=max_tokens,
    )


@dataclass(frozen=True)
class Overrun:
    """A bill above the bound: the attempts billed for more tokens than it allows, and the job's cost
    against what was reserved for it."""

    attempts: tuple[AttemptRecord, ...]
    cost: Decimal
    reserved: Decimal

    def billed(self) -> list[dict[str, object]]:
        """Each attempt billed over the bound: its model and the tokens it was billed, for alerts and logs."""
        return [
            {"model": r.model, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens}
            for r in self.attempts
        ]

    @property
    def model(self) -> str | None:
        """The model of the first attempt billed over the bound (None: only the total passed the reservation)."""
        return self.attempts[0].model if self.attempts else None


def usage_over_bound(
    bound: CallBound, attempts: Iterable[AttemptRecord], *, cost: Decimal, reserved: Decimal
) -> Overrun | None:
    """The rule both finish forms apply: the overrun when an attempt was billed above `bound` or the job's
    `cost` passed what was `reserved` for it, else None."""
    over = tuple(record for record in attempts if bound.exceeded_by(record))
    return Overrun(attempts=over, cost=cost, reserved=reserved) if over or cost > reserved else None
