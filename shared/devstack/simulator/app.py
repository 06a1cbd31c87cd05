"""The simulator's HTTP app: OpenAI's chat completions and models routes, plus /sim/* controls."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shared.devstack.simulator import answers
from shared.devstack.simulator import limits
from shared.devstack.simulator import sim_settings
from shared.devstack.simulator.sim_settings import FAULT_KINDS
from shared.devstack.simulator.sim_settings import SimSettings
from shared.routing.catalog import Catalog
from shared.upstream import token_count

logger = logging.getLogger(__name__)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ERROR_FAULTS = frozenset({"429", "500", "502", "503", "timeout"})
# Per-prompt call counters are kept for this many distinct prompts; past it the oldest half is forgotten,
# so a long benchmark with unique prompts can't grow the process without bound.
MAX_TRACKED_PROMPTS = 1_000_000
# A slow stream is sent in at most this many timed steps, so a long answer doesn't mean hundreds of timers.
MAX_STREAM_STEPS = 16
FINGERPRINT = "fp_simulator"
# One shared encoder: json.dumps with options builds a new encoder per call, which shows in streams.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class _ModelStats:
    calls: int = 0
    faults: int = 0
    # Calls answered 429 because they were over the model's SIM_RPM / SIM_TPM.
    throttled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _SimState:
    """What one running simulator remembers: its settings, per-prompt call counters and stats."""

    def __init__(self, *, catalog: Catalog, settings: SimSettings) -> None:
        self.catalog = catalog
        self.initial = settings
        self.settings = settings
        self.tiers = {m.name: (catalog.tiers.index(m.tier), len(catalog.tiers)) for m in catalog.models}
        self.logprob_models = frozenset(m.name for m in catalog.models if m.supports_logprobs)
        self.calls_by_prompt: dict[bytes, int] = {}
        self.stats = {name: _ModelStats() for name in catalog.model_names}
        self.limiter = limits.Limiter()

    def next_call(self, key: bytes) -> int:
        """Return how many calls this (model, prompt) has had before, and count this one."""
        count = self.calls_by_prompt.get(key, 0)
        if count == 0 and len(self.calls_by_prompt) >= MAX_TRACKED_PROMPTS:
            for old in list(itertools.islice(self.calls_by_prompt, MAX_TRACKED_PROMPTS // 2)):
                del self.calls_by_prompt[old]
        self.calls_by_prompt[key] = count + 1
        return count

    def reset_stats(self) -> None:
        """Zero the stats and the per-prompt call counters."""
        self.calls_by_prompt.clear()
        self.stats = {name: _ModelStats() for name in self.catalog.model_names}
        self.limiter = limits.Limiter()


STATE = web.AppKey("sim_state", _SimState)


@dataclass(frozen=True)
class _ChatRequest:
    model: str
    contents: tuple[str, ...]
    max_tokens: int | None
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool


def choose_fault(settings: SimSettings, *, model: str, key: bytes, call_index: int) -> str | None:
    """Choose the fault for the `call_index`-th call of one (model, prompt), or None for a clean answer."""
    if settings.fail_first is not None and call_index < settings.fail_first[1]:
        return settings.fail_first[0]
    if model in settings.down:
        return "503"
    if not settings.faults:
        return None
    # The draw hashes only this prompt's own call count, so other prompts' traffic can't shift it.
    digest = hashlib.sha256(f"{settings.seed}:{call_index}:".encode() + key).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for kind in FAULT_KINDS:
        cumulative += settings.faults.get(kind, 0.0)
        if draw < cumulative:
            return kind
    return None


def _error(
    status: int,
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds.is_integer() else f"{seconds:.3f}".rstrip("0")


def _fault_response(fault: str, settings: SimSettings) -> web.Response:
    retry = {} if settings.retry_after_s is None else {"Retry-After": _format_seconds(settings.retry_after_s)}
    if fault == "429":
        message = "Rate limit reached for requests (simulated)."
        return _error(429, message, kind="rate_limit_exceeded", code="rate_limit_exceeded", headers=retry)
    if fault == "503":
        message = "The server is overloaded or not ready yet (simulated)."
        return _error(503, message, kind="server_error", code="service_unavailable", headers=retry)
    if fault == "timeout":
        return _error(504, "The upstream timed out (simulated).", kind="server_error", code="timeout")
    message = f"The server had an error while processing your request (simulated {fault})."
    return _error(int(fault), message, kind="server_error")


def _optional_int(body: dict[str, Any], name: str, *, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limits = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise _BadRequest(f"'{name}' must be {limits}, got {value!r}", name)
    return value


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _BadRequest(f"'{name}' must be a boolean, got {value!r}", name)
    return bool(value)


def _message_content(message: object, index: int) -> str:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _BadRequest(f"'{param}' must be an object with 'role' and 'content'", param)
    role = message.get("role")
    if role not in ROLES:
        raise _BadRequest(f"'{param}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}", param + ".role")
    content = message.get("content")
    if isinstance(content, str):
        return content
    # Assistant turns that only called tools carry no content.
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "\n".join(part["text"] for part in content)
    raise _BadRequest(f"'{param}.content' must be a string or a list of text parts", param + ".content")


def _parse_chat_request(body: object) -> _ChatRequest:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required and must be a string.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' is required and must be a non-empty array.", "messages")
    contents = tuple(_message_content(message, index) for index, message in enumerate(messages))
    max_tokens = _optional_int(body, "max_completion_tokens", low=1)
    if max_tokens is None:
        max_tokens = _optional_int(body, "max_tokens", low=1)
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise _BadRequest(f"'temperature' must be a number from 0 to 2, got {temperature!r}", "temperature")
    if body.get("n") not in (None, 1):
        raise _BadRequest("The simulator only supports n=1.", "n")
    logprobs = _optional_bool(body, "logprobs")
    top_logprobs = _optional_int(body, "top_logprobs", low=0, high=20) or 0
    if top_logprobs and not logprobs:
        raise _BadRequest("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    stream = _optional_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _BadRequest("'stream_options' must be an object.", "stream_options")
    include_usage = _optional_bool(options or {}, "include_usage")
    return _ChatRequest(
        model=model,
        contents=contents,
        max_tokens=max_tokens,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        stream=stream,
        include_usage=include_usage,
    )


def _completion_body(
    chat: _ChatRequest, answer: answers.Answer, usage: dict[str, int], *, completion_id: str
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": answer.text, "refusal": None},
        "logprobs": answer.logprobs,
        "finish_reason": answer.finish_reason,
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [choice],
        "usage": usage,
    }


def _compact(value: object) -> str:
    return _COMPACT.encode(value)


def _stream_events(
    chat: _ChatRequest, answer: answers.Answer, usage: dict[str, int], *, completion_id: str
) -> list[bytes]:
    """Return the stream's events: one chunk per token, the finishing chunk, usage if asked, and [DONE]."""
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": chat.model,
        "system_fingerprint": FINGERPRINT,
    }
    # The fixed fields are encoded once and each chunk splices in its own choice: a long answer is hundreds
    # of chunks, and dumping each whole chunk would dominate the cost of a streamed request.
    head = "data: " + _compact(base)[:-1] + ',"choices":'
    tail = ',"usage":null}\n\n' if chat.include_usage else "}\n\n"
    entries = answer.logprobs["content"] if answer.logprobs else None
    events = []
    for index, piece in enumerate(answer.pieces):
        role = '"role":"assistant",' if index == 0 else ""
        logprobs = '{"content":[' + _compact(entries[index]) + "]}" if entries is not None else "null"
        delta = "{" + role + '"content":' + _compact(piece) + "}"
        choice = '[{"index":0,"delta":' + delta + ',"logprobs":' + logprobs + ',"finish_reason":null}]'
        events.append(head + choice + tail)
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": answer.finish_reason}
    events.append(head + _compact([finish]) + tail)
    if chat.include_usage:
        events.append(head + '[],"usage":' + _compact(usage) + "}\n\n")
    events.append("data: [DONE]\n\n")
    return [event.encode() for event in events]


async def _send_stream(
    request: web.Request, events: list[bytes], settings: SimSettings, *, headers: dict[str, str] | None = None
) -> tuple[web.StreamResponse, int]:
    """Send the stream's events on their schedule; return the response and how many events went out.

    A client that leaves stops the stream at the next write, as a real server stops generating.
    """
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
    )
    await response.prepare(request)
    remaining_s = max(0.0, settings.latency_ms - settings.ttft_ms) / 1000
    steps = min(MAX_STREAM_STEPS, len(events) - 1) if remaining_s else 0
    sent = 0

    async def send(batch: list[bytes]) -> None:
        nonlocal sent
        await response.write(b"".join(batch))
        sent += len(batch)

    try:
        if settings.ttft_ms > 0:
            await asyncio.sleep(settings.ttft_ms / 1000)
        if not steps and not settings.pause_ms:
            await send(events)
        else:
            await send(events[:1])
            if settings.pause_ms > 0:
                await asyncio.sleep(settings.pause_ms / 1000)
            rest = events[1:]
            if not steps:
                await send(rest)
            for step in range(steps):
                await asyncio.sleep(remaining_s / steps)
                await send(rest[step * len(rest) // steps : (step + 1) * len(rest) // steps])
        await response.write_eof()
    except ConnectionResetError:
        # A client that stops reading mid-stream is normal (it got what it wanted), not a server error.
        pass
    return response, sent


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(400, "The request body is not valid JSON.")
    try:
        chat = _parse_chat_request(body)
    except _BadRequest as exc:
        return _error(400, str(exc), param=exc.param)
    if chat.model not in state.tiers:
        message = f"The model `{chat.model}` does not exist or you do not have access to it."
        return _error(404, message, param="model", code="model_not_found")
    settings = state.settings
    header = request.headers.get("X-Sim")
    if header:
        try:
            settings = sim_settings.overlay_header(settings, header)
        except ValueError as exc:
            return _error(400, str(exc), param="X-Sim")

    stats = state.stats[chat.model]
    limited = {}
    if settings.rpm or settings.tpm:
        verdict = state.limiter.check(
            chat.model, rpm=settings.rpm, tpm=settings.tpm,
            tokens=token_count.count_prompt_tokens(chat.contents) + (chat.max_tokens or 0),
        )  # fmt: skip
        limited = verdict.headers
        if not verdict.admitted:
            stats.calls += 1
            stats.throttled += 1
            message = f"Rate limit reached for {chat.model} on {verdict.limit} per min (simulated)."
            return _error(429, message, kind=verdict.limit or "requests", code="rate_limit_exceeded", headers=limited)
    prompt = "\n".join(chat.contents)
    key = hashlib.sha256(f"{chat.model}\x1f{prompt}".encode("utf-8", "surrogatepass")).digest()
    fault = choose_fault(settings, model=chat.model, key=key, call_index=state.next_call(key))
    stats.calls += 1
    if fault in ERROR_FAULTS:
        stats.faults += 1
        if fault == "timeout":
            await asyncio.sleep(settings.timeout_hang_s)
        return _fault_response(fault, settings)

    tier_index, tier_count = state.tiers[chat.model]
    answer = answers.create_answer(
        model=chat.model,
        tier_index=tier_index,
        tier_count=tier_count,
        prompt=prompt,
        max_tokens=chat.max_tokens,
        seed=settings.seed,
        hedge=fault == "hedge",
        # A model the catalog marks as without logprobs answers like such a server: logprobs null.
        want_logprobs=chat.logprobs and chat.model in state.logprob_models,
        top_logprobs=chat.top_logprobs,
    )
    prompt_tokens = token_count.count_prompt_tokens(chat.contents)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": token_count.total_tokens(prompt_tokens, answer.completion_tokens),
    }
    # Billed when the answer is decided, so stats are current by the time the caller sees the response.
    stats.prompt_tokens += prompt_tokens
    stats.completion_tokens += answer.completion_tokens
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    if chat.stream:
        events = _stream_events(chat, answer, usage, completion_id=completion_id)
        response, sent = await _send_stream(request, events, settings, headers=limited)
        # A stream its client left is billed for the tokens sent (one per piece), as generation stopped there.
        stats.completion_tokens -= max(0, len(answer.pieces) - sent)
        return response
    if settings.latency_ms > 0:
        await asyncio.sleep(settings.latency_ms / 1000)
    return web.json_response(_completion_body(chat, answer, usage, completion_id=completion_id), headers=limited)


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "model-router-simulator"}


async def _list_models(request: web.Request) -> web.Response:
    names = request.app[STATE].catalog.model_names
    return web.json_response({"object": "list", "data": [_model_object(name) for name in names]})


async def _get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if name not in request.app[STATE].tiers:
        message = f"The model `{name}` does not exist or you do not have access to it."
        return _error(404, message, param="model", code="model_not_found")
    return web.json_response(_model_object(name))


async def _get_stats(request: web.Request) -> web.Response:
    stats = request.app[STATE].stats
    return web.json_response({"models": {name: asdict(entry) for name, entry in stats.items()}})


async def _reset_stats(request: web.Request) -> web.Response:
    request.app[STATE].reset_stats()
    return web.json_response({"status": "reset"})


async def _get_config(request: web.Request) -> web.Response:
    return web.json_response(sim_settings.describe(request.app[STATE].settings))


async def _set_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        return _error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object of settings.")
    reset = body.pop("reset", False)
    if not isinstance(reset, bool):
        return _error(400, f"'reset' must be a boolean, got {reset!r}", param="reset")
    try:
        settings = sim_settings.apply_config(state.initial if reset else state.settings, body)
    except ValueError as exc:
        return _error(400, str(exc))
    state.settings = settings
    # A new configuration starts a fresh count, so "fail the first n calls" means from now on.
    state.calls_by_prompt.clear()
    logger.info("simulator settings now %s", sim_settings.describe(settings))
    return web.json_response(sim_settings.describe(settings))


@web.middleware
async def _require_key(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    api_key = request.app[STATE].settings.api_key
    if api_key is not None:
        sent = request.headers.get("Authorization", "")
        expected = f"Bearer {api_key}"
        if not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")):
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    return await handler(request)


def create_sim_app(*, catalog: Catalog, settings: SimSettings) -> web.Application:
    """Create the simulator app for `catalog`, starting with `settings`."""
    app = web.Application(middlewares=[_require_key], client_max_size=4 * 1024 * 1024)
    app[STATE] = _SimState(catalog=catalog, settings=settings)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model}", _get_model)
    app.router.add_get("/sim/stats", _get_stats)
    app.router.add_post("/sim/reset", _reset_stats)
    app.router.add_get("/sim/config", _get_config)
    app.router.add_post("/sim/config", _set_config)
    return app
