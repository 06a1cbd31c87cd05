"""Every error leaves as the contract's JSON: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging

from flask import Flask
from flask import Response
from flask import has_request_context
from flask import request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from shared.errors import BudgetExceeded
from shared.errors import DomainError
from shared.errors import IdempotencyConflict
from shared.errors import InvalidInput
from shared.errors import LLMError
from shared.errors import ModelNotAllowed
from shared.errors import NotCancellable
from shared.errors import NotFound
from shared.errors import RateLimited
from shared.errors import RoutingError
from shared.errors import TokenRateExceeded
from shared.errors import TransientLLMError
from shared.errors import Unauthorized
from shared.errors import Unavailable
from shared.store import disconnects
from web.responses import ErrorBody
from web.responses import ErrorDetail
from web.responses import OpenAIErrorBody
from web.responses import OpenAIErrorDetail
from web.responses import send

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    InvalidInput: 400,
    RoutingError: 400,
    NotFound: 404,
    BudgetExceeded: 402,
    IdempotencyConflict: 409,
    NotCancellable: 409,
    Unauthorized: 401,
    ModelNotAllowed: 403,
    TokenRateExceeded: 429,
    Unavailable: 503,
    # A job whose upstream failed, answered synchronously (POST /v1/chat/completions); one no model would admit
    # before its deadline is the upstream's backpressure, passed on.
    RateLimited: 429,
    TransientLLMError: 503,
    LLMError: 502,
}

CODE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    402: "budget_exceeded",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "idempotency_conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
    504: "timeout",
}


# OpenAI's error `type` for each status, for the OpenAI-compatible routes under /v1.
OPENAI_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
OPENAI_PREFIX = "/v1/"


def error_response(status: int, code: str, message: str, details: dict[str, object] | None = None) -> Response:
    """Build the contract's error answer (on /v1 routes, OpenAI's error shape, which its SDKs parse)."""
    if has_request_context() and request.path.startswith(OPENAI_PREFIX):
        return _openai_error_response(status, code, message, details or {})
    return send(ErrorBody(error=ErrorDetail(code=code, message=message, details=details or {})), status)


def _openai_error_response(status: int, code: str, message: str, details: dict[str, object]) -> Response:
    kind = OPENAI_TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
    field = details.get("field")
    param = field if isinstance(field, str) else None
    return send(OpenAIErrorBody(error=OpenAIErrorDetail(message=message, type=kind, param=param, code=code)), status)


def _domain_error(error: DomainError) -> Response:
    status = next((s for cls, s in STATUS_BY_ERROR.items() if isinstance(error, cls)), 500)
    if status == 500:
        logger.error("unmapped domain error %s: %s", type(error).__name__, error.message)
        return error_response(500, "internal_error", "the server failed to handle this request")
    response = error_response(status, error.code, error.message, error.details)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="model-router"'
    if isinstance(error, TokenRateExceeded) and error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "http_error")
    response = error_response(status, code, error.description or error.name)
    # Keep the headers werkzeug set (Allow on 405, Retry-After on 429), but not its HTML content type.
    for name, value in error.get_response().headers.items():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


def _database_error(error: DBAPIError) -> Response:
    if disconnects.is_disconnect(error):
        logger.warning("database unreachable: %s", type(error.orig).__name__)
        return error_response(503, "unavailable", "the database is unreachable; nothing was reserved or charged")
    return _unexpected_error(error)


def _unexpected_error(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return _http_error(error)
    logger.exception("unhandled error")
    return error_response(500, "internal_error", "the server failed to handle this request")


def register_error_handlers(app: Flask) -> None:
    """Map domain errors, HTTP errors and anything unexpected to JSON."""
    app.register_error_handler(DomainError, _domain_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(DBAPIError, _database_error)
    app.register_error_handler(Exception, _unexpected_error)
