"""A hostile OpenAI-compatible upstream: answers `/v1/chat/completions` with what real servers get wrong.

Served on a loopback port from its own event loop in a background thread (like tests.support.sim), so that
the real OpenAIChatClient, or a whole stack's workers, call it over HTTP. Each request's mode is the first
word of its last message when that word names a mode (so one server answers a suite's different jobs each
its own way), else the server's `mode`. Modes:

- ok: a valid answer.
- negative_usage, huge_usage (above 2^31), fractional_usage, string_usage, over_context (a prompt above every
  model's context window), over_max_tokens (one completion token more than `max_tokens` sent), no_usage:
  a valid answer with usage that cannot be true, or none.
- over_reported: usage that is possible (below the context window) but far above what the request holds.
- non_string_content, missing_choices, empty_choices, bad_finish_reason, missing_message, non_json,
  json_array: answers that are not a chat completion.
- trickle: a valid answer whose body comes a byte every `interval_s`; hang_body: half a body, then nothing.
- stream_non_json_first, stream_non_json_later (after a first token), stream_negative_usage,
  stream_trickle (a valid token every `interval_s`, never finishing), stream_bad_delta (a delta that
  is not text), stream_empty (no event at all), stream_json_body (a JSON body, not an event stream): streamed
  answers (the request's `stream` must be true).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from aiohttp import web

START_TIMEOUT_S = 10.0
ANSWER = "Paris is the capital of France."
# Above every catalog model's context window, below 2^31.
OVER_CONTEXT_TOKENS = 100_000_000
# Over-reported but possible: above any bound of a short prompt, inside every model's context window.
OVER_REPORTED_TOKENS = 5_000

USAGE_MODES = {
    "negative_usage": {"prompt_tokens": -1_000_000, "completion_tokens": -5},
    "huge_usage": {"prompt_tokens": 2**40, "completion_tokens": 2**33},
    "fractional_usage": {"prompt_tokens": 12.5, "completion_tokens": 3},
    "string_usage": {"prompt_tokens": "12", "completion_tokens": "3"},
    "over_context": {"prompt_tokens": OVER_CONTEXT_TOKENS, "completion_tokens": 5},
    "over_reported": {"prompt_tokens": OVER_REPORTED_TOKENS, "completion_tokens": 5},
}
BAD_ANSWERS: dict[str, Any] = {
    "non_string_content": {
        "choices": [{"message": {"role": "assistant", "content": {"text": ANSWER}}, "finish_reason": "stop"}]
    },
    "missing_choices": {"id": "x", "object": "chat.completion"},
    "empty_choices": {"choices": []},
    "bad_finish_reason": {"choices": [{"message": {"content": ANSWER}, "finish_reason": 7}]},
    "missing_message": {"choices": [{"finish_reason": "stop"}]},
    "json_array": [1, 2, 3],
}
MODES = frozenset(
    {"ok", "over_max_tokens", "no_usage", "non_json", "trickle", "hang_body", "stream_non_json_first",
     "stream_non_json_later", "stream_negative_usage", "stream_trickle", "stream_bad_delta", "stream_empty",
     "stream_json_body"}
    | USAGE_MODES.keys() | BAD_ANSWERS.keys()
)  # fmt: skip


@dataclass
class HostileUpstream:
    """The server; `mode` answers requests that name none, `interval_s` paces trickled bodies."""

    mode: str = "ok"
    interval_s: float = 2.0
    # (mode, stream) of every request received, in order.
    calls: list[tuple[str, bool]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hostile-upstream", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostileUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=START_TIMEOUT_S)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_TIMEOUT_S)
        self._loop.close()

    def calls_in(self, mode: str) -> int:
        return sum(1 for called, _ in self.calls if called == mode)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        words = str((body.get("messages") or [{}])[-1].get("content") or "").split()
        mode = words[0] if words and words[0] in MODES else self.mode
        stream = bool(body.get("stream"))
        self.calls.append((mode, stream))
        max_tokens = int(body.get("max_tokens") or 16)
        if stream:
            return await self._stream(request, mode, max_tokens)
        usage: Any = {"prompt_tokens": 12, "completion_tokens": 7}
        if mode in USAGE_MODES:
            usage = USAGE_MODES[mode]
        elif mode == "over_max_tokens":
            usage = {"prompt_tokens": 12, "completion_tokens": max_tokens + 1}
        answer: Any = {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": usage,
        }
        if mode == "no_usage":
            del answer["usage"]
        answer = BAD_ANSWERS.get(mode, answer)
        raw = b"this is not JSON" if mode == "non_json" else json.dumps(answer).encode()
        if mode not in {"trickle", "hang_body"}:
            return web.Response(body=raw, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(raw))})
        await response.prepare(request)
        if mode == "hang_body":
            await response.write(raw[: len(raw) // 2])
            await asyncio.sleep(3600)
        for byte in raw:
            await response.write(bytes([byte]))
            await asyncio.sleep(self.interval_s)
        return response

    async def _stream(self, request: web.Request, mode: str, max_tokens: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def event(data: Any) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {text}\n\n".encode())

        def delta(content: Any, finish_reason: str | None = None) -> dict[str, Any]:
            return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}]}

        if mode == "stream_empty":
            return response
        if mode == "stream_json_body":
            await response.write(json.dumps({"choices": []}).encode())
            return response
        if mode == "stream_non_json_first":
            await event("{not json")
            return response
        if mode == "stream_bad_delta":
            await event(delta(["not", "text"]))
            return response
        await event(delta("Paris"))
        if mode == "stream_non_json_later":
            await event("<html>bad gateway</html>")
            return response
        if mode == "stream_trickle":
            while True:
                await asyncio.sleep(self.interval_s)
                await event(delta(" and"))
        await event(delta(" is the capital.", "stop"))
        usage: Any = {"prompt_tokens": 12, "completion_tokens": 4}
        if mode == "stream_negative_usage":
            usage = USAGE_MODES["negative_usage"]
        await event({"choices": [], "usage": usage})
        await event("[DONE]")
        return response


@contextmanager
def running_hostile(*, mode: str = "ok", interval_s: float = 2.0) -> Iterator[HostileUpstream]:
    """Serve a hostile upstream for the duration of the block."""
    server = HostileUpstream(mode=mode, interval_s=interval_s).start()
    try:
        yield server
    finally:
        server.stop()
