"""API keys: create (shown once), list, revoke, and authenticate by hash.

A key looks like `mr_<prefix>_<secret>`. The database holds the SHA-256 of the whole key and the short
prefix that lets people tell keys apart; the key itself exists only in the creator's hands. Keys carry
256 bits of randomness, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.db.types import utcnow
from shared.errors import InvalidInput
from shared.errors import NotFound

KEY_PREFIX = "mr_"


@dataclass(frozen=True)
class Identity:
    """Who is calling: what a request needs to know about its key."""

    api_key_id: int
    name: str
    is_admin: bool
    monthly_budget: Decimal | None
    rpm: int | None


def hash_key(key: str) -> str:
    """Return the stored form of `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create(
    session: Session,
    *,
    name: str,
    monthly_budget: Decimal | None = None,
    rpm: int | None = None,
    is_admin: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key; return its row and the key itself, which is never stored."""
    if not name.strip():
        raise InvalidInput("a key needs a name", details={"field": "name"})
    if monthly_budget is not None and monthly_budget < 0:
        raise InvalidInput("monthly budget must be at least 0", details={"field": "monthly_budget"})
    if rpm is not None and rpm < 1:
        raise InvalidInput("rpm must be at least 1", details={"field": "rpm"})
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        name=name.strip(),
        prefix=prefix,
        key_hash=hash_key(key),
        is_admin=is_admin,
        monthly_budget=monthly_budget,
        rpm=rpm,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, key


def list_(session: Session) -> list[ApiKey]:
    """Return every key, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke(session: Session, *, key_id_or_prefix: str) -> ApiKey:
    """Revoke the key with this id or prefix; revoking twice keeps the first time."""
    condition = ApiKey.prefix == key_id_or_prefix
    if key_id_or_prefix.isdigit():
        condition = or_(condition, ApiKey.id == int(key_id_or_prefix))
    row = session.scalars(select(ApiKey).where(condition)).one_or_none()
    if row is None:
        raise NotFound(f"no API key {key_id_or_prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def authenticate(session: Session, *, key: str) -> Identity | None:
    """Return the identity of a live key, or None for an unknown or revoked one."""
    if not key.startswith(KEY_PREFIX):
        return None
    digest = hash_key(key)
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
    # compare_digest keeps the final comparison constant-time; the index lookup is by hash, not by key.
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return Identity(
        api_key_id=row.id, name=row.name, is_admin=row.is_admin, monthly_budget=row.monthly_budget, rpm=row.rpm
    )
