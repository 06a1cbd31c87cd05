"""Fakes for the domain's ports, scripted per model."""

from __future__ import annotations

from collections import defaultdict
from collections import deque

from shared.catalog import ModelSpec
from shared.llm_client import Completion

FLUENT = "Paris is the capital of France. It has been the seat of government for centuries and is its largest city."


def ok(text: str = FLUENT, *, finish_reason: str = "stop", prompt_tokens: int = 12, completion_tokens: int = 24):
    """Return a scripted successful completion."""
    return Completion(
        text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )


class FakeLLMClient:
    """An LLMClient whose answers are scripted per model; unscripted calls answer FLUENT."""

    def __init__(self) -> None:
        self.scripts: dict[str, deque[Completion | Exception]] = defaultdict(deque)
        self.calls: list[str] = []
        self.timeouts: list[float | None] = []

    def script(self, model: str, *outcomes: Completion | Exception) -> None:
        self.scripts[model].extend(outcomes)

    def complete(self, *, model: ModelSpec, prompt: str, max_tokens: int, timeout_s: float | None = None) -> Completion:
        self.calls.append(model.name)
        self.timeouts.append(timeout_s)
        queue = self.scripts[model.name]
        outcome = queue.popleft() if queue else ok()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
