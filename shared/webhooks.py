"""Signed webhook bodies: what a receiver gets when a job, a batch or a budget alert calls back."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import WebhookDelivery
from shared.errors import InvalidInput

SIGNATURE_HEADER = "X-Router-Signature"


def sign(body: bytes, secret: str) -> str:
    """Return the signature header value for `body`: sha256=<hex HMAC-SHA256 keyed with `secret`>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    """Return the exact bytes that are signed and sent; money is a JSON number, as in the API's answers."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_value).encode()


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def check_url(url: str, *, allowed_hosts: Sequence[str], field: str = "callback_url") -> str:
    """Return `url` if it may be called back: http(s), and on an allowed host when a list is set."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{field} must be an http(s) URL", details={"field": field})
    if allowed_hosts and parts.hostname.lower() not in {host.lower() for host in allowed_hosts}:
        raise InvalidInput(f"{field} is not on an allowed host", details={"field": field})
    return url


def record_attempt(
    session: Session,
    *,
    resource: str,
    resource_id: str,
    url: str,
    status_code: int | None,
    error: str | None,
    delivered: bool,
) -> int:
    """Record one delivery attempt; return its number (1 for the first)."""
    previous = session.scalar(
        select(func.count(WebhookDelivery.id)).where(
            WebhookDelivery.resource == resource, WebhookDelivery.resource_id == resource_id
        )
    )
    attempt = int(previous or 0) + 1
    session.add(
        WebhookDelivery(
            resource=resource,
            resource_id=resource_id,
            url=url,
            attempt=attempt,
            status_code=status_code,
            error=error,
            delivered=delivered,
        )
    )
    return attempt
