"""What an upstream may answer, checked at one boundary: a chat answer, a stream chunk, and the usage they report.

Everything an OpenAI-compatible server sends is untrusted input: the `openai` SDK does not validate it, so
the client (shared.upstream.llm_client) reads each body or stream event through these models, parsing and validating in
one pass (pydantic-core, microseconds for a normal answer). Extra fields are allowed (servers add their own);
the fields the router reads must have the types it reads them as.

Usage is checked apart from the rest: an answer whose text is fine but whose usage cannot be true (negative,
not an integer, above what a count column holds, a prompt above the model's context window, a completion above
the `max_tokens` sent) keeps its text, and the attempt is charged at its bound and flagged `usage_invalid`
(shared.upstream.llm_client.complete_with_retries). Any other failure is a bad answer (BadResponse).
"""

from __future__ import annotations

from typing import Annotated
from typing import Any

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StrictFloat
from pydantic import StrictInt
from pydantic import StrictStr
from pydantic import ValidationError

# The most a token count column holds (INTEGER on PostgreSQL and SQLite alike).
MAX_TOKEN_COUNT = 2**31 - 1


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TokenLogprob(_Lenient):
    logprob: StrictFloat | StrictInt


class Logprobs(_Lenient):
    content: list[TokenLogprob] | None = None


class Message(_Lenient):
    content: StrictStr | None = None


class Choice(_Lenient):
    message: Message
    finish_reason: StrictStr | None = None
    logprobs: Logprobs | None = None


class Answer(_Lenient):
    """A chat completion: at least one choice; `usage` is checked apart (Usage)."""

    choices: list[Choice] = Field(min_length=1)
    usage: Any = None


class Delta(_Lenient):
    content: StrictStr | None = None


class ChunkChoice(_Lenient):
    delta: Delta | None = None
    finish_reason: StrictStr | None = None


class Chunk(_Lenient):
    """One streamed event: choices (possibly none, as in the usage chunk) and maybe `usage`, checked apart."""

    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Any = None
    # An error event some servers send mid-stream instead of closing it.
    error: Any = None


TokenCount = Annotated[StrictInt, Field(ge=0, le=MAX_TOKEN_COUNT)]


class Usage(_Lenient):
    """Usage as far as its own values go: counts a column can hold."""

    prompt_tokens: TokenCount
    completion_tokens: TokenCount


class BadResponse(ValueError):
    """The upstream's answer is not what an OpenAI-compatible server sends."""


def answer(body: bytes) -> Answer:
    """Parse and validate a chat completion's body, or raise BadResponse."""
    try:
        return Answer.model_validate_json(body)
    except ValidationError as error:
        raise BadResponse(_summary(error)) from None


def chunk(data: str) -> Chunk:
    """Parse and validate one stream event's data, or raise BadResponse."""
    try:
        return Chunk.model_validate_json(data)
    except ValidationError as error:
        raise BadResponse(_summary(error)) from None


def usage(raw: object, *, context_window: int, max_tokens: int) -> Usage | None:
    """Return the usage if it can be true of a call sent with `max_tokens` to a model of `context_window`
    tokens, else None (absent usage is None too: nothing says what the call cost)."""
    if raw is None:
        return None
    try:
        checked = Usage.model_validate(raw)
    except ValidationError:
        return None
    if checked.prompt_tokens > context_window or checked.completion_tokens > max_tokens:
        return None
    return checked


def _summary(error: ValidationError) -> str:
    """The first problem found, without the input's values (an answer may hold a tenant's text)."""
    first = error.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"
