"""Reading and validating request bodies into the contract's 400/415 answers."""

from __future__ import annotations

import json
from typing import Any
from typing import TypeVar

from flask import request
from pydantic import BaseModel
from pydantic import ValidationError
from werkzeug.exceptions import UnsupportedMediaType

from shared.errors import InvalidInput

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_json_object() -> dict[str, Any]:
    """Return the body as a JSON object; 415 for another media type, 400 for anything but an object."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    raw = request.get_data(cache=False)  # over MAX_CONTENT_LENGTH this raises 413
    try:
        body = json.loads(raw)
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
