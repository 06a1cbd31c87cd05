"""Calls to OpenAI-compatible chat servers, and the one retry layer around them.

Retries live here and only here: the `openai` SDK's own retries are off, and Celery task retries cover
infrastructure faults (broker, database), so the two never multiply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Protocol

import httpx
import openai
from tenacity import RetryCallState
from tenacity import Retrying
from tenacity import retry_if_exception
from tenacity import stop_after_attempt
from tenacity import wait_exponential_jitter

from shared.config import Settings
from shared.errors import LLMError
from shared.errors import PermanentLLMError
from shared.errors import TransientLLMError
from shared.ledger import call_bound
from shared.routing.catalog import ModelSpec
from shared.store.types import utcnow
from shared.upstream import answer_schema
from shared.upstream import token_count
from shared.upstream.admission import RateLimits
from shared.upstream.attempts import UNCONFIRMED
from shared.upstream.attempts import AttemptRecord
from shared.upstream.watchdog import WATCHDOG

# What a call or the read of its body raises when the upstream fails: the SDK's errors, and those of the HTTP
# library under it (httpx, or httpx2 in the SDK's later versions) for a body cut or shut part way.
HTTP_ERRORS: tuple[type[BaseException], ...] = (openai.APIError, httpx.HTTPError, OSError)
with contextlib.suppress(ImportError):
    import httpx2

    HTTP_ERRORS += (httpx2.HTTPError,)

# Keys never travel to a server that did not ask for one; a local simulator accepts any.
PLACEHOLDER_KEY = "no-key"


@dataclass(frozen=True)
class Completion:
    """One successful answer and what the server billed for it."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...] | None = None
    # The server's usage could not be true, or it sent none: the tokens above are not its word, and the
    # attempt is charged at its bound (complete_with_retries).
    usage_invalid: bool = False
    # What the answer's headers said of the upstream's rate limits (shared.upstream.admission learns from it).
    rate_limits: RateLimits | None = None


class LLMClient(Protocol):
    """Anything that can answer one prompt with one model, raising Transient/PermanentLLMError."""

    def complete(
        self, *, model: ModelSpec, prompt: str, max_tokens: int, timeout_s: float | None = None
    ) -> Completion: ...


class StreamInterrupted(LLMError):
    """A streamed answer the upstream cut after its first token: what was produced is billed, never retried."""

    code = "upstream_cut"

    def __init__(self, message: str, *, partial: Completion, details: dict[str, object] | None = None) -> None:
        super().__init__(message, details=details)
        self.partial = partial


class StreamCancelled(StreamInterrupted):
    """A streamed answer stopped because its client left: billed for what arrived (see complete_with_retries)."""

    code = "cancelled"  # the code of every cancelled job (shared.jobs.lifecycle.CANCELLED)


# The error class of an answer that is not what an OpenAI-compatible server sends (shared.upstream.answer_schema).
BAD_RESPONSE = "bad_response"


class UpstreamBadResponse(LLMError):
    """An answer that failed validation. It may have been billed, so its attempt is charged at its bound. Not
    retried on the same model (each try would cost another bound, which the job's reservation does not hold),
    it falls back to the next model like any failed call, and counts against the model's circuit."""

    code = "upstream_bad_response"


class StreamBadResponse(StreamInterrupted):
    """A stream that carried an event failing validation after its first token: charged at its bound, ended."""

    code = "upstream_bad_response"


class CallerGone(Exception):
    """Raised by an `on_delta` callback when nobody reads the answer any more: the stream is closed at once."""


# The error classes that say the upstream itself is broken, the only failures its circuit breaker counts: a
# 5xx, a connection that could not be made or was lost, a call that timed out, an answer that failed
# validation. A 429 says the upstream is
# busy (its limit, not its health), another 4xx that it refused this request, a deadline that we ran out of
# time: none of them opens a circuit.
UPSTREAM_BROKEN = frozenset({"server_error", "connection", "timeout", BAD_RESPONSE})

# The sampling options a chat request may pass through to the upstream untouched.
PASSTHROUGH_OPTIONS = ("temperature", "top_p", "stop", "user", "seed", "presence_penalty", "frequency_penalty")


@dataclass
class CallResult:
    """What a retried call ended with: a completion or the last error, and every attempt made."""

    completion: Completion | None = None
    error: LLMError | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)

    @property
    def retry_count(self) -> int:
        return max(len(self.attempts) - 1, 0)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient upstream failures."""

    max_attempts: int = 3
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    retry_after_cap_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.upstream_max_attempts,
            backoff_initial_s=settings.upstream_backoff_initial_s,
            backoff_max_s=settings.upstream_backoff_max_s,
            retry_after_cap_s=settings.upstream_retry_after_cap_s,
        )


# SDK clients (each with its own connection pool) per server, used in turn. On every request and response
# httpcore walks each connection of its pool, so one pool holding a gevent worker's hundreds of connections
# costs that many checks per call; eight smaller pools cost an eighth of it.
POOL_SHARDS = 8


class OpenAIChatClient:
    """The `openai` SDK behind the LLMClient protocol: reused SDK clients per server, POOL_SHARDS of them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[tuple[str | None, str | None, int], openai.OpenAI] = {}
        self._turns = itertools.count()
        self._lock = threading.Lock()

    def complete(
        self,
        *,
        model: ModelSpec,
        prompt: str,
        max_tokens: int,
        timeout_s: float | None = None,
        messages: list[dict[str, str]] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Completion:
        """Ask `model` once within its tier's timeouts (and `timeout_s`, the job's time left); map failures.

        `messages` (a chat's turns) replace the single user turn made of `prompt`; `options` are
        PASSTHROUGH_OPTIONS sent as they are.
        """
        request = self._request(model, prompt, max_tokens, messages, options)
        if model.supports_logprobs:
            request["logprobs"] = True
        watchdog = None
        try:
            # The SDK's documented raw request (same client, keys, timeouts and error mapping), read as plain
            # JSON: transforming the typed parameters and building the typed answer cost more CPU than the call.
            response = self._post(model, request, timeout_s)
            try:
                watchdog = _Watchdog.over(response, timeout_s)
                body = response.read()
            finally:
                response.close()
        except HTTP_ERRORS as exc:
            raise _mapped(model.name, exc, timed_out=watchdog is not None and watchdog.fired) from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
        completion = _parsed(model, body, max_tokens=max_tokens)
        limits = RateLimits.from_headers(response.headers)
        return completion if limits is None else dataclasses.replace(completion, rate_limits=limits)

    def stream(
        self,
        *,
        model: ModelSpec,
        prompt: str,
        max_tokens: int,
        on_delta: Callable[[str], None],
        timeout_s: float | None = None,
        messages: list[dict[str, str]] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Completion:
        """Ask `model` once with a streamed answer, passing each text delta to `on_delta` as it arrives.

        Failures before the first delta map as in complete(); a failure after it raises StreamInterrupted
        with what was produced (usage counted with the simulator's token rule when the server sent none), or
        StreamBadResponse when an event failed validation. CallerGone raised by `on_delta` passes through,
        after closing the upstream connection.
        """
        request = self._request(model, prompt, max_tokens, messages, options)
        request.update(stream=True, stream_options={"include_usage": True})
        pieces: list[str] = []
        finish_reason: str | None = None
        usage: object | None = None
        watchdog = None
        try:
            response = self._post(model, request, timeout_s)
            try:
                watchdog = _Watchdog.over(response, timeout_s)
                for data in _sse_data(response.iter_lines()):
                    if data == "[DONE]":
                        break
                    chunk = answer_schema.chunk(data)
                    if chunk.error is not None:
                        raise TransientLLMError(
                            f"{model.name}: the upstream sent an error event", details={"error_class": "server_error"}
                        )
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if choice.delta is not None and choice.delta.content:
                        pieces.append(choice.delta.content)
                        on_delta(choice.delta.content)
                    if choice.finish_reason is not None:
                        finish_reason = choice.finish_reason
            finally:
                response.close()
        except answer_schema.BadResponse as bad:
            message = f"{model.name}: the upstream sent a stream event that is not valid ({bad})"
            if not pieces:
                raise UpstreamBadResponse(message, details={"error_class": BAD_RESPONSE}) from None
            raise StreamBadResponse(
                message, partial=Completion("".join(pieces), None, 0, 0), details={"error_class": BAD_RESPONSE}
            ) from None
        except (*HTTP_ERRORS, TransientLLMError) as exc:
            # A connection lost mid-stream surfaces from the iterator as httpx's own error.
            timed_out = watchdog is not None and watchdog.fired
            if not pieces:
                raise (exc if isinstance(exc, LLMError) else _mapped(model.name, exc, timed_out=timed_out)) from None
            raise StreamInterrupted(
                f"{model.name}: the upstream {'took too long' if timed_out else 'cut the stream'}",
                partial=_counted(request["messages"], pieces, None, None, model=model, max_tokens=max_tokens),
                details={"error_class": "stream_cut"},
            ) from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
        sent = request["messages"]
        if finish_reason is None and not pieces:
            # No answer at all (no event, or not an event stream): what the upstream billed is not known.
            raise UpstreamBadResponse(
                f"{model.name}: the stream ended without an answer", details={"error_class": BAD_RESPONSE}
            )
        if finish_reason is None and pieces:
            # The connection ended without a finishing chunk: the answer is incomplete.
            raise StreamInterrupted(
                f"{model.name}: the stream ended early",
                partial=_counted(sent, pieces, None, usage, model=model, max_tokens=max_tokens),
                details={"error_class": "stream_cut"},
            )
        return _counted(sent, pieces, finish_reason, usage, model=model, max_tokens=max_tokens)

    @staticmethod
    def _request(
        model: ModelSpec,
        prompt: str,
        max_tokens: int,
        messages: list[dict[str, str]] | None,
        options: dict[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            "model": model.upstream_model or model.name,
            "messages": call_bound.sent_messages(prompt, messages),
            "max_tokens": max_tokens,
            **{name: value for name, value in (options or {}).items() if name in PASSTHROUGH_OPTIONS},
        }

    def _post(self, model: ModelSpec, request: dict[str, Any], timeout_s: float | None) -> Any:
        """Send the request; return the response once its headers are in, its body left to read."""
        return self._client_for(model).post(
            "/chat/completions",
            body=request,
            cast_to=httpx.Response,
            stream=True,
            options={"timeout": self._timeout_for(model, timeout_s)},
        )

    def close(self) -> None:
        """Close every SDK client and its connection pool."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _timeout_for(self, model: ModelSpec, timeout_s: float | None) -> openai.Timeout:
        """Return the model's tier timeouts (else the settings'), shrunk to `timeout_s`, the job's time left."""
        read_s = model.read_timeout_s or self._settings.upstream_read_timeout_s
        connect_s = model.connect_timeout_s or self._settings.upstream_connect_timeout_s
        if timeout_s is not None:
            read_s, connect_s = min(read_s, timeout_s), min(connect_s, timeout_s)
        return openai.Timeout(read_s, connect=connect_s)

    def _client_for(self, model: ModelSpec) -> openai.OpenAI:
        key = (model.base_url, model.api_key_env, next(self._turns) % POOL_SHARDS)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._build_client(model)
                self._clients[key] = client
            return client

    def _build_client(self, model: ModelSpec) -> openai.OpenAI:
        settings = self._settings
        if model.api_key_env:
            api_key = os.environ.get(model.api_key_env) or PLACEHOLDER_KEY
        elif model.base_url is not None:
            # A model on a server of its own gets no key unless it names one: the default key is for
            # the default server only.
            api_key = PLACEHOLDER_KEY
        elif settings.openai_api_key is not None:
            api_key = settings.openai_api_key.get_secret_value()
        else:
            api_key = PLACEHOLDER_KEY
        return openai.OpenAI(
            api_key=api_key,
            base_url=model.base_url or settings.openai_base_url,
            max_retries=0,
            timeout=openai.Timeout(settings.upstream_read_timeout_s, connect=settings.upstream_connect_timeout_s),
        )


def _parsed(model: ModelSpec, body: bytes, *, max_tokens: int) -> Completion:
    """Read a chat completion's body through its model (shared.upstream.answer_schema); raise UpstreamBadResponse."""
    try:
        answer = answer_schema.answer(body)
    except answer_schema.BadResponse as bad:
        raise UpstreamBadResponse(
            f"{model.name}: the answer is not valid ({bad})", details={"error_class": BAD_RESPONSE}
        ) from None
    choice = answer.choices[0]
    tokens_logprobs = choice.logprobs.content if choice.logprobs is not None else None
    usage = answer_schema.usage(answer.usage, context_window=model.context_window, max_tokens=max_tokens)
    return Completion(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        prompt_tokens=0 if usage is None else usage.prompt_tokens,
        completion_tokens=0 if usage is None else usage.completion_tokens,
        logprobs=tuple(float(token.logprob) for token in tokens_logprobs) if tokens_logprobs else None,
        usage_invalid=usage is None,
    )


def _mapped(model_name: str, exc: BaseException, *, timed_out: bool = False) -> LLMError:
    if timed_out or isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return TransientLLMError(f"{model_name}: upstream timed out", details={"error_class": "timeout"})
    if isinstance(exc, openai.APIStatusError):
        return _status_error(model_name, exc)
    return TransientLLMError(f"{model_name}: cannot connect to upstream", details={"error_class": "connection"})


def _counted(
    messages: list[dict[str, str]],
    pieces: list[str],
    finish_reason: str | None,
    usage: object | None,
    *,
    model: ModelSpec,
    max_tokens: int,
) -> Completion:
    """Return a streamed answer with the server's usage, or with tokens counted by the simulator's rule when it
    sent none; usage it sent that cannot be true marks the answer `usage_invalid`."""
    text = "".join(pieces)
    if usage is not None:
        checked = answer_schema.usage(usage, context_window=model.context_window, max_tokens=max_tokens)
        if checked is None:
            return Completion(text=text, finish_reason=finish_reason, prompt_tokens=0, completion_tokens=0,
                              usage_invalid=True)  # fmt: skip
        prompt_tokens, completion_tokens = checked.prompt_tokens, checked.completion_tokens
    else:
        prompt_tokens = token_count.count_prompt_tokens(str(m.get("content") or "") for m in messages)
        completion_tokens = token_count.count_tokens(text)
    return Completion(
        text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """Yield the data of each server-sent event (its `data:` lines joined); comments and other fields are skipped."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


class _Watchdog:
    """Ends an attempt's body at its time limit: shuts the response's socket, which ends a read in progress.

    httpx's read timeout counts from each read, so a body trickled a byte at a time never trips it; this
    counts the whole body. (Connecting and the response's headers are bounded by the connect and read
    timeouts, shrunk to the same time left.)
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._alarm = WATCHDOG.arm(seconds, self._fire)

    @classmethod
    def over(cls, response: Any, seconds: float | None) -> _Watchdog | None:
        """Watch `response` for `seconds` (None: no limit; a response without a socket cannot be watched)."""
        stream = response.extensions.get("network_stream")
        sock = None if stream is None else stream.get_extra_info("socket")
        if seconds is None or sock is None:
            return None
        return cls(sock, seconds)

    @property
    def fired(self) -> bool:
        return self._alarm.fired

    def _fire(self) -> None:
        with contextlib.suppress(OSError):  # already closed
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._alarm.cancel()


def _status_error(model_name: str, exc: openai.APIStatusError) -> LLMError:
    status = exc.status_code
    if status == 429 or status >= 500:
        kind = "rate_limited" if status == 429 else "server_error"
        limits = RateLimits.from_headers(exc.response.headers)
        error = TransientLLMError(
            f"{model_name}: upstream answered {status}",
            status_code=status,
            retry_after_s=None if limits is None else limits.retry_after_s,
            details={"error_class": kind},
        )
        error.rate_limits = limits
        return error
    return PermanentLLMError(
        f"{model_name}: upstream rejected the request ({status})",
        status_code=status,
        details={"error_class": "rejected"},
    )


def complete_with_retries(
    client: LLMClient,
    *,
    model: ModelSpec,
    prompt: str,
    max_tokens: int,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    on_attempt: Callable[[AttemptRecord], None] | None = None,
    messages: list[dict[str, str]] | None = None,
    options: dict[str, Any] | None = None,
    on_delta: Callable[[str], None] | None = None,
    retry_throttled: bool = True,
) -> CallResult:
    """Call `model`, retrying transient failures with jittered exponential backoff or Retry-After.

    With `retry_throttled` False a 429 ends the call at once (admission control, shared.upstream.admission, paces the
    next one).

    `deadline` (a time.monotonic() value) bounds the whole call: no attempt starts or waits past it, and
    each attempt's timeouts shrink to the time left. `on_attempt` sees every attempt as it ends (the
    circuit breaker counts them). `messages` and `options`, when given, go to the client as they are
    (OpenAIChatClient.complete). With `on_delta` the answer is streamed to it (client.stream); a stream
    cut after its first token is billed for what it produced and not retried. When `on_delta` raises
    CallerGone the stream is closed and the attempt ends StreamCancelled, charged at its bound and unconfirmed,
    since the upstream sends usage only at the end.

    Never raises for an upstream failure: the result carries the last error
    and every attempt.
    """
    result = CallResult()
    backoff = wait_exponential_jitter(
        multiplier=policy.backoff_initial_s, max=policy.backoff_max_s, jitter=policy.backoff_initial_s
    )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, LLMError) and error.retry_after_s is not None:
            return min(error.retry_after_s, policy.retry_after_cap_s)
        return backoff(state)

    # Only chat requests carry these, so clients that take a single prompt keep working for the rest.
    chat: dict[str, Any] = {}
    if messages is not None:
        chat["messages"] = messages
    if options:
        chat["options"] = options

    def time_left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    def record(attempt: AttemptRecord) -> None:
        result.attempts.append(attempt)
        if on_attempt is not None:
            on_attempt(attempt)

    bound = call_bound.call_bound(prompt=prompt, max_tokens=max_tokens, messages=messages, options=options)

    def attempt() -> Completion:
        started_at = utcnow()
        start = time.perf_counter()
        left = time_left()
        error: LLMError | None = None
        received: list[str] = []

        def receive(text: str) -> None:
            received.append(text)  # first: a delta that arrived was billed, relayed or not
            on_delta(text)  # type: ignore[misc]

        try:
            if left is not None and left <= 0:
                raise TransientLLMError(f"{model.name}: the job's deadline passed", details={"error_class": "deadline"})
            if on_delta is not None:
                completion = client.stream(  # type: ignore[attr-defined]
                    model=model, prompt=prompt, max_tokens=max_tokens, timeout_s=left, on_delta=receive, **chat
                )
            else:
                completion = client.complete(model=model, prompt=prompt, max_tokens=max_tokens, timeout_s=left, **chat)
        except CallerGone as gone:
            completion = Completion("".join(received), None, 0, 0)
            error = StreamCancelled(
                f"{model.name}: stopped, {gone}", partial=completion, details={"error_class": "cancelled"}
            )
        except LLMError as failure:
            error = failure
            # A stream cut part way was still billed for what it produced.
            completion = failure.partial if isinstance(failure, StreamInterrupted) else Completion("", None, 0, 0)
        # An answer that failed validation, or whose usage cannot be true, may have been billed anything up to
        # its bound: it is charged at the bound, never at what it said. So is a stream its client left: the
        # upstream reports usage only in its last chunk, and tokens were on their way (or still being produced)
        # when it was closed, so what it billed is not known.
        at_bound = (
            completion.usage_invalid
            or isinstance(error, StreamCancelled)
            or (error is not None and error.details.get("error_class") == BAD_RESPONSE)
        )
        if at_bound:
            completion = dataclasses.replace(
                completion, prompt_tokens=bound.prompt_tokens, completion_tokens=bound.completion_tokens
            )
        record(
            AttemptRecord(
                model=model.name,
                tier=model.tier,
                outcome="ok" if error is None else UNCONFIRMED if at_bound else "error",
                latency_ms=_elapsed_ms(start),
                started_at=started_at,
                error_class=None if error is None else str(error.details.get("error_class", type(error).__name__)),
                status_code=None if error is None else error.status_code,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                cost=model.cost(completion.prompt_tokens, completion.completion_tokens),
                usage_invalid=completion.usage_invalid,
                rate_limits=completion.rate_limits if error is None else error.rate_limits,
                deployment=model.deployment,
            )
        )
        if error is not None:
            raise error
        return completion

    def out_of_time(state: RetryCallState) -> bool:
        # Stop when the wait before the next attempt would end past the deadline.
        left = time_left()
        return left is not None and (state.upcoming_sleep or 0) >= left

    retrying = Retrying(
        stop=stop_after_attempt(policy.max_attempts) | out_of_time,
        wait=wait,
        # Never UpstreamBadResponse (see its docstring); a 429 goes back to admission unless told to retry it.
        retry=retry_if_exception(
            lambda error: (
                isinstance(error, TransientLLMError)
                and (retry_throttled or error.details.get("error_class") != "rate_limited")
            )
        ),
        sleep=sleep,
        reraise=True,
    )
    try:
        result.completion = retrying(attempt)
    except LLMError as error:
        result.error = error
    return result


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
