"""Log lines as JSON (or readable text), each carrying the request id and job id of the work in hand.

Code binds what it is working on (`bind(request_id=..., job_id=...)`) for the duration of a request or a
job run; every line logged meanwhile carries those fields. Event lines add their own fields with
`logger.info("job finished", extra=logs.fields(status=..., cost=...))`. Prompt text is never passed
here unless LOG_PROMPTS=true, and secrets never are.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from contextvars import Token
from datetime import UTC
from datetime import datetime
from types import MappingProxyType
from typing import Any

from shared.config import Settings
from shared.security import masking

_bound: ContextVar[Mapping[str, Any]] = ContextVar("model_router_log_context", default=MappingProxyType({}))

# Record attributes: a line's own fields (from `extra`) and the fields bound when it was logged.
FIELDS_ATTR = "fields"
CONTEXT_ATTR = "context"


def bind(**values: Any) -> Token[Mapping[str, Any]]:
    """Add fields to every line logged in this context (thread, greenlet) until `unbind`."""
    return _bound.set({**_bound.get(), **values})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    """Forget what the matching `bind` added."""
    _bound.reset(token)


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind fields for the duration of a block."""
    token = bind(**values)
    try:
        yield
    finally:
        unbind(token)


def current(name: str) -> Any:
    """Return a bound field's value, or None."""
    return _bound.get().get(name)


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """Return the `extra` argument that gives one log line its own structured fields."""
    return {FIELDS_ATTR: values}


class ContextFilter(logging.Filter):
    """Copy the bound fields onto each record, in the thread that logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, CONTEXT_ATTR, dict(_bound.get()))
        return True


def _structured(record: logging.LogRecord) -> dict[str, Any]:
    return {**getattr(record, CONTEXT_ATTR, {}), **getattr(record, FIELDS_ATTR, {})}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the bound fields and the line's own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_structured(record),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return masking.mask_urls_in(json.dumps(entry, default=str, ensure_ascii=False), path=False)


class TextFormatter(logging.Formatter):
    """The classic line for development, with the structured fields appended as key=value.

    The `event` field is left out: the message already names it.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(
            f"{key}={value}" for key, value in _structured(record).items() if value is not None and key != "event"
        )
        if extra:
            head, newline, rest = line.partition("\n")  # keep a traceback below the line it belongs to
            line = f"{head} {extra}{newline}{rest}"
        return masking.mask_urls_in(line, path=False)


def resolve_format(settings: Settings) -> str:
    """Return "json" or "text": LOG_FORMAT if set, else JSON everywhere but development."""
    if settings.log_format is not None:
        return settings.log_format
    return "text" if settings.environment == "development" else "json"


def make_handler(settings: Settings, stream: Any = None) -> logging.Handler:
    """Return a handler writing to `stream` (stderr) in the configured format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(settings) == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure(settings: Settings, *, force: bool = False) -> None:
    """Send the root logger's lines to stderr in the configured format at LOG_LEVEL.

    A root logger that already has handlers (a test runner's, an embedding application's) is left alone
    unless `force` is set.
    """
    root = logging.getLogger()
    if root.handlers and not force:
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(make_handler(settings))
    root.setLevel(settings.log_level)
