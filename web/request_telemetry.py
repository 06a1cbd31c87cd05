"""Per HTTP request: one structured log line and the request counters, from a start time and the response.

Both are updated in memory only (no database or Redis round trip), so the overhead is a few counter
increments. A streamed response is measured to its first byte, when its headers are sent.
"""

from __future__ import annotations

import logging
import time

from flask import Flask
from flask import Response
from flask import g
from flask import request

from shared.observability import logs
from shared.observability import metrics
from web.auth import current_identity

logger = logging.getLogger(__name__)

# The route label of requests no Flask rule matched (404s), so scanners cannot mint new label values.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def init_app(app: Flask) -> None:
    """Time every request and record it when its response is ready."""
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_record)


def _start() -> None:
    g.request_started = time.perf_counter()


def _record(response: Response) -> Response:
    started = g.get("request_started")
    if started is None:  # the request failed before any before_request hook ran
        return response
    seconds = time.perf_counter() - started
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method if request.method in METHODS else "other"
    metrics.record_http_request(route=route, method=method, status=response.status_code, seconds=seconds)
    identity = current_identity()
    logger.info(
        "http request",
        extra=logs.fields(
            event="http_request",
            method=method,
            route=route,
            path=request.path,
            status=response.status_code,
            duration_ms=round(seconds * 1000, 3),
            remote_addr=request.remote_addr,
            api_key_id=None if identity is None else identity.api_key_id,
        ),
    )
    return response
