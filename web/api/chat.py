"""POST /v1/chat/completions and GET /v1/models: the router behind OpenAI's own API shape.

A chat completion is the same job as POST /api/prompt (same reservation, ledger, stats and record); the
answer comes back as OpenAI's `chat.completion`, and the router's own details travel in `x-router-*`
headers. Errors on /v1 leave in OpenAI's error shape (web.errors).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint
from flask import Response
from flask import current_app
from flask import stream_with_context
from werkzeug.exceptions import GatewayTimeout

from shared.errors import InvalidInput
from shared.errors import LLMError
from shared.errors import RateLimited
from shared.errors import RoutingError
from shared.errors import TransientLLMError
from shared.errors import Unavailable
from shared.jobs import lifecycle
from shared.ledger import model_access
from shared.routing.catalog import Catalog
from shared.store import stream_relay
from shared.store.models import RequestLog
from shared.upstream import token_count
from shared.upstream.llm_client import PASSTHROUGH_OPTIONS
from web import submission
from web import waiter
from web.auth import current_identity
from web.db import look_at_job
from web.requests import read_json_object
from web.requests import validate
from web.responses import ChatCompletion
from web.responses import ChatCompletionChunk
from web.responses import ChatCompletionUsage
from web.responses import ModelList
from web.responses import ModelObject
from web.responses import OpenAIErrorBody
from web.responses import send
from web.schemas import ChatCompletionRequest

logger = logging.getLogger(__name__)

bp = Blueprint("openai", __name__, url_prefix="/v1")

# `model` values that route rather than force a model, and the preference each one routes with.
ROUTER_ALIASES = {
    "router": "balanced",
    "auto": "balanced",
    "router:cost": "cost",
    "router:balanced": "balanced",
    "router:quality": "quality",
}
# How long past the job's own deadline a request waits before answering 504 (queueing, recording).
WAIT_SLACK_S = 15.0


@bp.get("/models")
def list_models() -> Response:
    """List the router's aliases, then every catalog model the caller's key may call (its `allowed_models`)."""
    identity = current_identity()
    catalog = model_access.catalog_for(
        current_app.extensions["catalog"], None if identity is None else identity.allowed_models
    )
    aliases = [_model_object(name, owned_by="model-router") for name in ROUTER_ALIASES]
    models = [_model_object(name, owned_by="model-router-catalog") for name in catalog.model_names]
    return send(ModelList(object="list", data=aliases + models))


@bp.post("/chat/completions")
def create_chat_completion() -> Response:
    """Route one chat and answer it as a `chat.completion`."""
    settings = current_app.extensions["settings"]
    raw = read_json_object()
    body = validate(ChatCompletionRequest, raw, max_prompt_chars=settings.max_prompt_chars)
    request = job_request(body, catalog=current_app.extensions["catalog"], max_prompt_chars=settings.max_prompt_chars)
    job_id, queued = submission.accept_job(raw, request, use_cache=body.cache)
    timeout_s = settings.default_deadline_s + WAIT_SLACK_S
    if request.stream:
        if queued:
            submission.enqueue_job(job_id)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return _stream(job_id, timeout_s=timeout_s, include_usage=include_usage)
    completion_waiter = waiter.get_waiter()
    done = completion_waiter.register(job_id)
    try:
        if queued:
            submission.enqueue_job(job_id)
        else:
            done.set()
        answer = waiter.wait_for(
            done, timeout_s=timeout_s, look=lambda: look_at_job(job_id, _answer), recheck_s=completion_waiter.recheck_s
        )
    finally:
        completion_waiter.unregister(job_id, done)
    if answer is None:
        # Clients of this API cannot poll: say which job it was, so that /api/jobs can still tell.
        raise GatewayTimeout(
            f"job {job_id} did not finish in time; it may still finish and be charged (GET /api/jobs/{job_id})"
        )
    body_out, headers = answer
    response = send(body_out)
    response.headers.update(headers)
    return response


def job_request(body: ChatCompletionRequest, *, catalog: Catalog, max_prompt_chars: int) -> lifecycle.JobRequest:
    """Turn a validated chat request into the job it stands for (RoutingError for an unknown model)."""
    preference, model = "balanced", None
    if body.model in ROUTER_ALIASES:
        preference = ROUTER_ALIASES[body.model]
    elif body.model in catalog.model_names:
        model = body.model
    else:
        known = [*ROUTER_ALIASES, *catalog.model_names]
        raise RoutingError(f"unknown model {body.model!r}", details={"field": "model", "known": known})
    messages = [{"role": message.role, "content": message.text} for message in body.messages]
    # Difficulty is estimated from, and the cost bound covers, the whole conversation.
    prompt = "\n".join(message["content"] for message in messages)
    if not prompt.strip():
        raise InvalidInput("the messages must contain some text", details={"field": "messages"})
    if len(prompt) > max_prompt_chars:
        raise InvalidInput(
            f"the messages must be at most {max_prompt_chars} characters together", details={"field": "messages"}
        )
    # The request's fields the upstream is sent as they are.
    options = {name: getattr(body, name) for name in PASSTHROUGH_OPTIONS if getattr(body, name) is not None}
    return lifecycle.JobRequest(
        prompt=prompt,
        max_tokens=body.max_completion_tokens or body.max_tokens or 1000,
        preference=preference,
        model=model,
        messages=messages,
        options=options or None,
        stream=bool(body.stream),
    )


def _answer(job: RequestLog) -> tuple[ChatCompletion, dict[str, str]] | None:
    """Return the finished job's completion and headers, or None while it runs."""
    if not job.status.is_terminal:
        return None
    if job.error_code is not None:
        raise _job_error(job)
    return completion_body(job), router_headers(job)


def _job_error(job: RequestLog) -> LLMError:
    message = f"job {job.id}: {job.error_message or 'the upstream call failed'}"
    if job.error_code == RateLimited.code:
        return RateLimited(message, details={"job_id": job.id})
    if job.error_code == TransientLLMError.code:
        return TransientLLMError(message, details={"job_id": job.id})
    return LLMError(message, details={"job_id": job.id})


def completion_body(job: RequestLog) -> ChatCompletion:
    """Return a succeeded job as OpenAI's `chat.completion` object."""
    return ChatCompletion.model_validate(
        {
            "id": f"chatcmpl-{job.id}",
            "object": "chat.completion",
            "created": int((job.finished_at or job.created_at).timestamp()),
            "model": job.model_used,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": job.response or "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": job.finish_reason or "stop",
                }
            ],
            "usage": {
                "prompt_tokens": job.prompt_tokens,
                "completion_tokens": job.completion_tokens,
                "total_tokens": job.tokens_used,
            },
        }
    )


def router_headers(job: RequestLog) -> dict[str, str]:
    """Return the router's details of a job as `x-router-*` headers."""
    headers = {"x-router-job-id": job.id}
    if job.tier is not None:
        headers["x-router-tier"] = job.tier
    if job.model_used is not None:
        headers["x-router-model"] = job.model_used
    if job.difficulty_score is not None:
        headers["x-router-difficulty"] = f"{job.difficulty_score}"
    if job.difficulty_level is not None:
        headers["x-router-difficulty-level"] = job.difficulty_level
    headers["x-router-cost"] = str(float(job.cost))  # as the JSON answers show it
    headers["x-router-escalated"] = "true" if job.escalated else "false"
    headers["x-router-cached"] = "true" if job.cached else "false"
    headers["x-router-retries"] = str(job.retry_count)
    return headers


def _stream(job_id: str, *, timeout_s: float, include_usage: bool) -> Response:
    """Relay the job's streamed answer as OpenAI's chunks, once its first entry (a token or an error) is in.

    Waiting for the first entry before answering lets a stream that cannot start answer with the status a
    whole answer would have (504 when it timed out, 503 when its relay cannot be read). After that, failures
    end the stream with an error event in OpenAI's error shape, silences are bridged by keep-alive comments,
    and a client that leaves cancels the job (see shared.store.stream_relay), as does every way of giving up on it here:
    nobody would read the rest.
    """
    reader = _stream_reader()
    keepalive_ms = int(current_app.extensions["settings"].stream_keepalive_s * 1000)
    deadline = time.monotonic() + timeout_s
    entries: list[tuple[str, dict[str, str]]] = []
    while not entries:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            reader.request_cancel(job_id)
            raise GatewayTimeout(f"job {job_id} sent no token in time; {_look_later(job_id)}")
        try:
            entries = reader.read(job_id, after="0-0", block_ms=min(left_ms, keepalive_ms))
        except redis.RedisError:
            logger.warning("cannot read the stream of job_id=%s", job_id, exc_info=True)
            reader.request_cancel(job_id)
            raise Unavailable(f"job {job_id}: its answer cannot be relayed; {_look_later(job_id)}") from None
    first = entries[0][1]
    if first["type"] == stream_relay.ERROR:
        raise _stream_error(job_id, first)
    model = first.get("model", "")
    headers = {"x-router-job-id": job_id, "x-router-model": model, "x-router-tier": first.get("tier", "")}
    chunk_base = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": int(time.time())}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        fields = {**chunk_base, "model": model, "system_fingerprint": None, "choices": choices, **extra}
        if include_usage and "usage" not in extra:
            fields["usage"] = None
        # Unset stays out: `usage` unless asked for, and the delta's role after the first chunk.
        body = ChatCompletionChunk.model_validate(fields).model_dump(exclude_unset=True)
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    ended = False

    def relayed() -> Iterator[str]:
        nonlocal ended
        pending, last_id, opened = list(entries), "0-0", False
        while True:
            for entry_id, entry in pending:
                last_id = entry_id
                if entry["type"] == stream_relay.DELTA:
                    delta = {"content": entry["text"]}
                    if not opened:
                        delta = {"role": "assistant", **delta}
                        opened = True
                    yield chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
                elif entry["type"] == stream_relay.DONE:
                    ended = True
                    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": entry["finish_reason"]}
                    yield chunk([finish])
                    if include_usage:
                        yield chunk([], usage=_usage(entry))
                    yield "data: [DONE]\n\n"
                    return
                else:
                    ended = True
                    yield _error_event(f"job {job_id}: {entry['message']}", entry["code"])
                    return
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                ended = True
                reader.request_cancel(job_id)
                yield _error_event(f"job {job_id} did not finish streaming in time; {_look_later(job_id)}", "timeout")
                return
            try:
                pending = reader.read(job_id, after=last_id, block_ms=min(left_ms, keepalive_ms))
            except redis.RedisError:
                logger.warning("stream of job_id=%s cut: its relay cannot be read", job_id, exc_info=True)
                ended = True
                reader.request_cancel(job_id)
                yield _error_event(f"job {job_id}: its answer cannot be relayed; {_look_later(job_id)}", "unavailable")
                return
            if not pending:
                yield KEEPALIVE

    def events() -> Iterator[str]:
        try:
            yield from relayed()
        except GeneratorExit:
            # Closed before its end: the client left (the server closes the response once its socket is dead,
            # which a keep-alive reveals during a silence). The worker stops the upstream call at its next token.
            if not ended:
                logger.info("client left the stream; cancelling job_id=%s", job_id)
                reader.request_cancel(job_id)
            raise

    response = Response(stream_with_context(events()), mimetype="text/event-stream", headers=headers)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


# An SSE comment: clients ignore it, and it keeps idle-timeout proxies from closing a stream the upstream paused.
KEEPALIVE = ": keep-alive\n\n"
# Error classes of an attempt that ran out of time: a stream failing with one before its first token is a 504.
TIMEOUT_CLASSES = frozenset({"timeout", "deadline"})


def _look_later(job_id: str) -> str:
    return f"it may still finish and be charged (GET /api/jobs/{job_id})"


def _error_event(message: str, code: str) -> str:
    """Return the SSE event that ends a stream cut after its first token (the `openai` SDK raises on it)."""
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return f"data: {json.dumps(OpenAIErrorBody.model_validate({'error': error}).model_dump())}\n\n"


def _usage(entry: dict[str, str]) -> ChatCompletionUsage:
    prompt_tokens, completion_tokens = int(entry["prompt_tokens"]), int(entry["completion_tokens"])
    return ChatCompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=token_count.total_tokens(prompt_tokens, completion_tokens),
    )


def _stream_error(job_id: str, entry: dict[str, str]) -> Exception:
    """Return the error a stream that failed before its first token answers with (504 if it ran out of time)."""
    message = f"job {job_id}: {entry['message']}"
    if entry.get("error_class") in TIMEOUT_CLASSES:
        return GatewayTimeout(message)
    if entry["code"] == TransientLLMError.code:
        return TransientLLMError(message, details={"job_id": job_id})
    return LLMError(message, details={"job_id": job_id})


def _stream_reader() -> stream_relay.Reader:
    """Return this process's stream reader, made on first use (after gunicorn forks)."""
    reader = current_app.extensions.get("stream_reader")
    if reader is None:
        settings = current_app.extensions["settings"]
        reader = stream_relay.Reader(
            settings.redis_url, max_block_s=settings.stream_keepalive_s, max_connections=settings.redis_max_connections
        )
        current_app.extensions["stream_reader"] = reader
    return reader


def _model_object(name: str, *, owned_by: str) -> ModelObject:
    return ModelObject(id=name, object="model", created=0, owned_by=owned_by)
