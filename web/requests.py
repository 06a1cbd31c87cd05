"""Reading and validating request bodies into the contract's 400/415 answers."""

from __future__ import annotations

import json
import math
from typing import Any
from typing import TypeVar

from flask import request
from pydantic import BaseModel
from pydantic import ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from shared.errors import InvalidInput

ModelT = TypeVar("ModelT", bound=BaseModel)


class _NotStrictJSON(ValueError):
    """Valid for Python's json module, not for JSON: NaN, Infinity, out-of-range numbers, duplicate keys."""


def _reject_constant(name: str) -> float:
    raise _NotStrictJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotStrictJSON(f"{text} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _NotStrictJSON("an object repeats a key")
    return dict(pairs)


def read_json_object() -> dict[str, Any]:
    """Return the body as a strict JSON object; 415 for another media type or an encoded body, else 400."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    if request.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType("send the body without a Content-Encoding")
    raw = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH this raises 413
    try:
        body = json.loads(
            raw, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except _NotStrictJSON as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", details={"field": "body"}) from None
    except RecursionError:
        raise InvalidInput("the body nests too deeply", details={"field": "body"}) from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON", details={"field": "body"}) from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object", details={"field": "body"})
    return body


def validate(model: type[ModelT], body: dict[str, Any], **context: object) -> ModelT:
    """Validate `body` against `model`; a failure names the first bad field and lists every problem."""
    try:
        return model.model_validate(body, context=context)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": _message(error)}
            for error in exc.errors()
        ]
        first = problems[0]
        raise InvalidInput(
            f"{first['field']}: {first['message']}", details={"field": first["field"], "errors": problems}
        ) from None


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "is required"
    return str(error["msg"]).removeprefix("Value error, ")
