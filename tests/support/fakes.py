"""Fakes for the domain's ports, scripted per model."""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from shared.routing.catalog import ModelSpec
from shared.upstream.llm_client import Completion
from shared.upstream.llm_client import StreamInterrupted
from web import waiter

FLUENT = "Paris is the capital of France. It has been the seat of government for centuries and is its largest city."


def ok(text: str = FLUENT, *, finish_reason: str = "stop", prompt_tokens: int = 12, completion_tokens: int = 24):
    """Return a scripted successful completion."""
    return Completion(
        text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )


class Cut(Exception):
    """Scripted for a streamed call: send `text`'s words, then cut the stream."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Slow:
    """Scripted for a streamed call: send `completion` word by word like a slow server, `first_s` before the
    first word, `pause_s` after it, `every_s` between the others (a closed stream stops it at once)."""

    completion: Completion
    first_s: float = 0.0
    pause_s: float = 0.0
    every_s: float = 0.0


class FakeLLMClient:
    """An LLMClient whose answers are scripted per model; unscripted calls answer FLUENT."""

    def __init__(self) -> None:
        self.scripts: dict[str, deque[Completion | BaseException | Slow]] = defaultdict(deque)
        self.calls: list[str] = []
        self.timeouts: list[float | None] = []
        self.requests: list[dict[str, object]] = []
        self.streamed: list[str] = []

    def script(self, model: str, *outcomes: Completion | BaseException | Slow) -> None:
        self.scripts[model].extend(outcomes)

    def complete(
        self,
        *,
        model: ModelSpec,
        prompt: str,
        max_tokens: int,
        timeout_s: float | None = None,
        messages: list[dict[str, str]] | None = None,
        options: dict[str, object] | None = None,
    ) -> Completion:
        self.calls.append(model.name)
        self.requests.append({"prompt": prompt, "messages": messages, "options": options})
        self.timeouts.append(timeout_s)
        queue = self.scripts[model.name]
        outcome = queue.popleft() if queue else ok()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def stream(
        self,
        *,
        model: ModelSpec,
        prompt: str,
        max_tokens: int,
        on_delta: Callable[[str], None],
        timeout_s: float | None = None,
        messages: list[dict[str, str]] | None = None,
        options: dict[str, object] | None = None,
    ) -> Completion:
        """Answer as complete() would, sending the answer word by word to `on_delta` first."""
        self.streamed.append(model.name)
        queue = self.scripts[model.name]
        outcome = queue[0] if queue else None
        if isinstance(outcome, Slow):
            queue.popleft()
            self.calls.append(model.name)
            time.sleep(outcome.first_s)
            for index, word in enumerate(re.findall(r"\S+\s*", outcome.completion.text)):
                if index:
                    time.sleep(outcome.pause_s if index == 1 else outcome.every_s)
                on_delta(word)
            return outcome.completion
        if isinstance(outcome, Cut):
            queue.popleft()
            self.calls.append(model.name)
            for word in re.findall(r"\S+\s*", outcome.text):
                on_delta(word)
            partial = ok(outcome.text, prompt_tokens=12, completion_tokens=len(outcome.text.split()))
            raise StreamInterrupted(f"{model.name}: cut", partial=partial, details={"error_class": "stream_cut"})
        completion = self.complete(
            model=model, prompt=prompt, max_tokens=max_tokens, timeout_s=timeout_s, messages=messages, options=options
        )
        for word in re.findall(r"\S+\s*", completion.text):
            on_delta(word)
        return completion


class _ExpiredEvent(waiter.Done):
    """A completion event whose every wait times out at once."""

    def wait(self, timeout: float | None = None) -> bool:
        return False


class TimedOutWaiter:
    """Stands in for the Redis completion waiter: every wait ends as if `timeout_s` had passed."""

    recheck_s = math.inf  # no rechecks before the deadline: the first wait is the whole timeout

    def register(self, job_id: str) -> waiter.Done:
        return _ExpiredEvent()

    def unregister(self, job_id: str, event: waiter.Done) -> None:
        pass

    def take_body(self, job_id: str, event: waiter.Done) -> None:
        return None


class Clock:
    """A clock that stands still until a test moves it (`clock.now += seconds`), for code taking `clock=`."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now
