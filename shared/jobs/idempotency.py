"""Idempotency keys: the same key and request within a day map to the same job or batch, race or not.

The key is claimed with an INSERT that a unique index makes single-winner: a racing duplicate waits on
the winner's transaction and then finds its row, so two requests can never both create work.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import IdempotencyConflict
from shared.errors import InvalidInput
from shared.store.insert_or_ignore import insert_or_ignore
from shared.store.models import IdempotencyKey

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255
ANONYMOUS = "anonymous"


def owner_of(api_key_id: int | None) -> str:
    """Return whose key space an Idempotency-Key lives in."""
    return ANONYMOUS if api_key_id is None else f"key:{api_key_id}"


def fingerprint(body: dict[str, Any]) -> str:
    """Return a digest of the request body that ignores key order and whitespace."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_key(key: str) -> str:
    """Return the key if it is usable; 400 otherwise."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable characters", details={"field": "Idempotency-Key"}
        )
    return key


def claim(
    session: Session,
    *,
    owner: str,
    key: str,
    request_hash: str,
    resource: str,
    resource_id: str,
    now: datetime,
) -> str | None:
    """Claim `key` for a new resource; return None if claimed, or the id the key already stands for.

    Raises IdempotencyConflict when the key was used with a different request (or for another kind of
    resource). Must be the first write of the caller's transaction; the caller creates the resource in
    the same transaction.
    """
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.owner == owner, IdempotencyKey.key == key, IdempotencyKey.created_at < now - TTL
        )
    )
    values = {
        "owner": owner, "key": key, "request_hash": request_hash, "resource": resource, "resource_id": resource_id,
        "created_at": now,
    }  # fmt: skip
    if insert_or_ignore(session, IdempotencyKey, values, conflict_on=("owner", "key")):
        return None
    existing = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key)
    ).one()
    if existing.request_hash != request_hash or existing.resource != resource:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request", details={"field": "Idempotency-Key"}
        )
    return existing.resource_id


def purge(session: Session, *, now: datetime) -> int:
    """Delete keys older than the TTL; return how many."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - TTL))
    return result.rowcount  # type: ignore[attr-defined]


def forget(session: Session, *, owner: str, key: str) -> None:
    """Remove a claimed key whose work was withdrawn."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key))
