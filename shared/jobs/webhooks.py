"""Signed webhook bodies: what a receiver gets when a job, a batch or a budget alert calls back."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.errors import InvalidInput
from shared.security import egress
from shared.security import masking
from shared.security import sealing
from shared.store.models import WebhookDelivery

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


def accept_url(url: str, *, settings: Settings, field: str = "callback_url") -> str:
    """Return `url` sealed for storage if it may be called back, or raise 400 naming `field`.

    It must be an http(s) URL that `egress` allows, and the server must hold a secret to sign with.
    """
    egress.check_url(url, policy=settings.webhook_policy, field=field)
    if settings.webhook_secret is None:
        raise InvalidInput("callbacks need WEBHOOK_SECRET set on the server", details={"field": field})
    return sealing.require(settings).seal(url)


def deliver(
    url: str, payload: dict[str, Any], *, secret: SecretStr | None, timeout_s: float, policy: egress.HostPolicy
) -> Delivery:
    """POST `payload` to `url`, signed with `secret` if given, on an address `egress` allows; never raises.

    The outcome's error text never holds the URL's secrets.
    """
    body = encode(payload)
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret.get_secret_value())
    try:
        response = egress.post(url, content=body, headers=headers, timeout=timeout_s, policy=policy)
    except egress.Refused as exc:
        return Delivery(status_code=None, error=f"refused: {exc}", retry=False)
    except (httpx.HTTPError, OSError) as exc:
        return Delivery(status_code=None, error=masking.mask_urls_in(f"{type(exc).__name__}: {exc}", path=False)[:500])
    if response.is_success:
        return Delivery(status_code=response.status_code, error=None)
    # A redirect is not followed: the address it names was never checked.
    return Delivery(status_code=response.status_code, error=f"HTTP {response.status_code}")


@dataclass(frozen=True)
class Delivery:
    """One POST's outcome: the receiver's status, and an error unless it answered 2xx."""

    status_code: int | None
    error: str | None
    retry: bool = True

    @property
    def delivered(self) -> bool:
        return self.error is None


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
    """Record one delivery attempt, with the URL masked; return its number (1 for the first)."""
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
            url=masking.mask_url(url, path=False),
            attempt=attempt,
            status_code=status_code,
            error=error,
            delivered=delivered,
        )
    )
    return attempt
