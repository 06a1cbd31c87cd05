"""How tokens are counted where no server says: a call's tokens when its stream sent no usage (the simulator
bills by the same rule), and the total a call used."""

from __future__ import annotations

import re
from collections.abc import Iterable

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Chat formatting overhead, in the spirit of OpenAI's own accounting.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


def count_tokens(text: str) -> int:
    """Count the tokens of `text`: at least 1 for non-empty text, never more than its UTF-8 bytes."""
    if not text:
        return 0
    # Each match spans at least one character, hence at least one byte; whitespace-only text counts as 1.
    return max(1, len(TOKEN_RE.findall(text)))


def count_prompt_tokens(contents: Iterable[str]) -> int:
    """Count the prompt tokens of a chat request whose messages have these contents."""
    return sum(count_tokens(content) + TOKENS_PER_MESSAGE for content in contents) + TOKENS_PER_REPLY


def total_tokens(prompt_tokens: int, completion_tokens: int) -> int:
    """Return the tokens a call used in all: what a job records as `tokens_used` and the API as `total_tokens`."""
    return prompt_tokens + completion_tokens
