"""Request ids: the client's X-Request-ID when it is a sane token, else a new one; echoed in the response.

The id is bound to the request's log context (every line logged while serving it carries it) and stored
on the jobs the request creates, whose worker lines carry it too.
"""

from __future__ import annotations

import re
import uuid
from contextlib import suppress

from flask import Flask
from flask import Response
from flask import g
from flask import request

from shared.observability import logs

HEADER = "X-Request-ID"
# Fits request_logs.request_id; no spaces, quotes or control characters to forge log lines or headers with.
VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")


def init_app(app: Flask) -> None:
    """Give every request an id before anything else runs, and return it on every response."""
    app.before_request_funcs.setdefault(None, []).insert(0, _bind)
    app.after_request(_echo)
    app.teardown_request(_unbind)


def choose(supplied: str | None) -> str:
    """Return `supplied` if it is a valid request id, else a newly generated one."""
    if supplied is not None and VALID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


def current() -> str | None:
    """Return the id of the request being served."""
    return g.get("request_id")


def _bind() -> None:
    g.request_id = choose(request.headers.get(HEADER))
    g.request_log_token = logs.bind(request_id=g.request_id)


def _echo(response: Response) -> Response:
    if "request_id" in g:
        response.headers[HEADER] = g.request_id
    return response


def _unbind(_: BaseException | None) -> None:
    token = g.pop("request_log_token", None)
    # A streamed response's teardown may run in another context than the bind; the next bind replaces it.
    with suppress(ValueError):
        if token is not None:
            logs.unbind(token)
