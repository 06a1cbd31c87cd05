"""A small client for the model-router HTTP API: base URL, bearer key, timeouts, and errors as exit codes.

Every failure leaves as one `ApiError` line on stderr with an exit code a script can branch on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import click
import httpx

from shared.devstack import stack_paths
from shared.errors import ConfigError
from shared.security import masking

CONNECT_TIMEOUT_S = 5.0

# Exit codes: stable, documented in `model-router --help`.
EXIT_FAILED = 1  # a job failed, or an error with no code of its own
EXIT_USAGE = 2  # bad arguments, bad input or configuration (click uses 2 for usage errors too)
EXIT_UNREACHABLE = 3  # the server cannot be reached, or answers that it is unavailable (503)
EXIT_UNAUTHORIZED = 4  # 401: no key, or an unknown or revoked one
EXIT_BUDGET = 5  # 402: the budget cannot cover the work
EXIT_RATE_LIMITED = 6  # 429
EXIT_NOT_FOUND = 7  # 404

EXIT_BY_STATUS = {
    400: EXIT_USAGE,
    401: EXIT_UNAUTHORIZED,
    402: EXIT_BUDGET,
    404: EXIT_NOT_FOUND,
    413: EXIT_USAGE,
    415: EXIT_USAGE,
    429: EXIT_RATE_LIMITED,
    503: EXIT_UNREACHABLE,
}


class ApiError(click.ClickException):
    """A request that did not succeed, as one line and an exit code."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILED, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status

    def format_message(self) -> str:
        # One line, whatever the server put in its message.
        return " ".join(self.message.split())


def default_url() -> str:
    """Return the API's URL when none is given: MODEL_ROUTER_URL, else the local stack's on PORT (else 8000),
    each from the environment, else from `.env`.

    `make run` serves on PORT, so a CLI run in the same environment (or the same directory) finds it without --url.
    """
    try:
        environ = stack_paths.local_environ(os.environ)
        return environ.get("MODEL_ROUTER_URL") or stack_paths.local_url(environ)
    except ConfigError as exc:
        raise ApiError(exc.message, exit_code=EXIT_USAGE) from None


@dataclass(frozen=True)
class Endpoint:
    """Where the API is, who we are to it, and how long a request may take."""

    url: str = field(default_factory=default_url)
    key: str | None = None
    timeout_s: float = 30.0
    # Tests hand in an httpx.MockTransport; None means real sockets.
    transport: httpx.BaseTransport | None = None


@dataclass(frozen=True)
class Answer:
    """A successful response: its status, decoded JSON body and headers."""

    status: int
    body: Any
    headers: httpx.Headers


class ApiClient:
    """Send JSON requests to one model-router server; raise ApiError for anything but success."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        headers = {"Accept": "application/json", "User-Agent": "model-router-cli"}
        if endpoint.key:
            headers["Authorization"] = f"Bearer {endpoint.key}"
        try:
            self._client = httpx.Client(
                base_url=endpoint.url.rstrip("/"),
                headers=headers,
                timeout=httpx.Timeout(endpoint.timeout_s, connect=min(CONNECT_TIMEOUT_S, endpoint.timeout_s)),
                transport=endpoint.transport,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise ApiError(f"invalid --url {masking.mask_url(endpoint.url)!r}: {exc}", exit_code=EXIT_USAGE) from None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def get(self, path: str, *, params: dict[str, str] | None = None, accept: tuple[int, ...] = (200,)) -> Answer:
        """GET `path`; return the answer if its status is in `accept`."""
        return self.request("GET", path, params=params, accept=accept)

    def post(
        self,
        path: str,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        accept: tuple[int, ...] = (200, 202),
        timeout_s: float | None = None,
    ) -> Answer:
        """POST `body` as JSON to `path`; return the answer if its status is in `accept`."""
        return self.request("POST", path, json_body=body, headers=headers, accept=accept, timeout_s=timeout_s)

    def delete(self, path: str, *, accept: tuple[int, ...] = (200,)) -> Answer:
        """DELETE `path`; return the answer if its status is in `accept`."""
        return self.request("DELETE", path, accept=accept)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        accept: tuple[int, ...] = (200,),
        timeout_s: float | None = None,
    ) -> Answer:
        """Send one request; return the decoded answer or raise ApiError."""
        extra: dict[str, Any] = {}
        if timeout_s is not None:
            extra["timeout"] = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        try:
            response = self._client.request(
                method,
                path,
                json=json_body if method != "GET" else None,
                params=params,
                headers=headers,
                **extra,
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        body = _decode(response)
        if response.status_code in accept and body is not _NOT_JSON:
            return Answer(response.status_code, body, response.headers)
        raise self._status_error(response, body)

    def _transport_error(self, exc: httpx.HTTPError) -> ApiError:
        url = masking.mask_url(self.endpoint.url)
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return ApiError(f"invalid --url {url!r}: {exc}", exit_code=EXIT_USAGE)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            reason = _reason(exc)
            return ApiError(
                f"cannot reach the model-router server at {url} ({reason}); is it running? "
                "Set --url or MODEL_ROUTER_URL to point elsewhere",
                exit_code=EXIT_UNREACHABLE,
            )
        if isinstance(exc, httpx.TimeoutException):
            return ApiError(f"the server at {url} did not answer in time ({type(exc).__name__})", exit_code=EXIT_FAILED)
        return ApiError(f"the connection to {url} failed: {_reason(exc)}", exit_code=EXIT_UNREACHABLE)

    def _status_error(self, response: httpx.Response, body: Any) -> ApiError:
        status = response.status_code
        exit_code = EXIT_BY_STATUS.get(status, EXIT_FAILED)
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            if body is _NOT_JSON:
                return ApiError(
                    f"{response.request.method} {response.request.url.path} answered {status} with no JSON body; "
                    f"is {self.endpoint.url} a model-router server?",
                    exit_code=exit_code if status >= 400 else EXIT_FAILED,
                    status=status,
                )
            return ApiError(f"unexpected {status} answer: {_shorten(json.dumps(body))}", exit_code=exit_code)
        code = error.get("code") or "error"
        message = str(error.get("message") or response.reason_phrase)
        hint = ""
        if status == 401:
            hint = " (pass --key or set MODEL_ROUTER_API_KEY)" if not self.endpoint.key else " (check --key)"
        elif status == 429 and response.headers.get("Retry-After"):
            hint = f" (retry after {response.headers['Retry-After']} s)"
        elif status == 402:
            details = error.get("details") or {}
            required, remaining = details.get("required"), details.get("remaining")
            if isinstance(required, int | float) and isinstance(remaining, int | float):
                hint = f" (needs up to ${required:.6f}; ${remaining:.6f} left)"
        return ApiError(f"{status} {code}: {message}{hint}", exit_code=exit_code, status=status)


class _NotJson:
    def __repr__(self) -> str:
        return "<not JSON>"


_NOT_JSON: Any = _NotJson()


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return _NOT_JSON


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    # httpx wraps the OS error: "[Errno 111] Connection refused" reads better without the number.
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
