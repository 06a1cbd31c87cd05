"""API keys: create (shown once), list, change, revoke, and authenticate by hash.

A key looks like `mr_<prefix>_<secret>`. The database holds the SHA-256 of the whole key and the short
prefix that lets people tell keys apart; the key itself exists only in the creator's hands. Keys carry
256 bits of randomness, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.errors import NotFound
from shared.ledger import budget
from shared.ledger import window_spans
from shared.store.models import ApiKey
from shared.store.types import floor_to_nanos
from shared.store.types import utcnow

KEY_PREFIX = "mr_"
PREFIX_BYTES = 4
SECRET_BYTES = 32
# What create() hands out: anything else is refused without a database lookup.
KEY_FORMAT = re.compile(rf"{KEY_PREFIX}[0-9a-f]{{{2 * PREFIX_BYTES}}}_[A-Za-z0-9_-]{{{(SECRET_BYTES * 4 + 2) // 3}}}")


@dataclass(frozen=True)
class Identity:
    """Who is calling: what a request needs to know about its key."""

    api_key_id: int
    name: str
    is_admin: bool
    monthly_budget: Decimal | None
    rpm: int | None
    tpm: int | None = None
    # The models the key may be answered by; None: any.
    allowed_models: frozenset[str] | None = None
    # The key's own budget windows (shared.ledger.windows): {window: limit}.
    budget_windows: Mapping[str, Decimal] = field(default_factory=dict, hash=False)


# What update() may change; revocation is final and has its own verb.
CHANGEABLE = ("name", "monthly_budget", "rpm", "tpm", "expires_at", "allowed_models", "budget_windows")


def hash_key(key: str) -> str:
    """Return the stored form of `key`."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create(
    session: Session,
    *,
    name: str,
    monthly_budget: Decimal | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    expires_at: datetime | None = None,
    allowed_models: Iterable[str] | None = None,
    budget_windows: Mapping[str, Any] | None = None,
    known_models: Iterable[str] | None = None,
    is_admin: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key; return its row and the key itself, which is never stored.

    `allowed_models` must be names in `known_models` (the catalog's) when that is given.
    """
    settings = _checked(
        {"name": name, "monthly_budget": monthly_budget, "rpm": rpm, "tpm": tpm, "expires_at": expires_at,
         "allowed_models": allowed_models, "budget_windows": budget_windows},
        known_models=known_models,
    )  # fmt: skip
    prefix = secrets.token_hex(PREFIX_BYTES)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"
    row = ApiKey(prefix=prefix, key_hash=hash_key(key), is_admin=is_admin, created_at=utcnow(), **settings)
    session.add(row)
    session.flush()
    return row, key


def get_or_raise(session: Session, *, key_id: int) -> ApiKey:
    """Return the key with this id, or raise NotFound."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id}")
    return row


def update(
    session: Session, *, key_id: int, changes: dict[str, Any], known_models: Iterable[str] | None = None
) -> ApiKey:
    """Change the named settings of a live key (a None value clears a limit); a revoked key cannot change."""
    unknown = sorted(set(changes) - set(CHANGEABLE))
    if unknown:
        raise InvalidInput(f"cannot change {', '.join(unknown)}", details={"field": unknown[0]})
    row = get_or_raise(session, key_id=key_id)
    if row.revoked_at is not None:
        raise InvalidInput(f"API key {key_id} is revoked; create a new one", details={"field": "key_id"})
    first_windows = row.budget_windows is None
    for name, value in _checked(changes, known_models=known_models).items():
        setattr(row, name, value)
    session.flush()
    if first_windows and row.budget_windows is not None:
        # Its windows count what the key spent before they were set (shared.ledger.windows).
        budget.count_window_history(session, scope=budget.key_scope(key_id), api_key_id=key_id, now=utcnow())
    return row


def status_of(row: ApiKey, *, now: datetime) -> str:
    """Return "active", "expired" or "revoked": what authenticate() makes of the key at `now`."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def _checked(values: dict[str, Any], *, known_models: Iterable[str] | None) -> dict[str, Any]:
    """Return `values` normalised for storage, or raise InvalidInput naming the first bad field."""
    checked = dict(values)
    if "name" in values:
        if values["name"] is None or not values["name"].strip():
            raise InvalidInput("a key needs a name", details={"field": "name"})
        checked["name"] = values["name"].strip()
    own_budget = values.get("monthly_budget")
    if own_budget is not None and own_budget < 0:
        raise InvalidInput("monthly budget must be at least 0", details={"field": "monthly_budget"})
    if own_budget is not None:
        checked["monthly_budget"] = floor_to_nanos(own_budget)
    for limit in ("rpm", "tpm"):
        if values.get(limit) is not None and values[limit] < 1:
            raise InvalidInput(f"{limit} must be at least 1", details={"field": limit})
    expires_at = values.get("expires_at")
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidInput("expires_at needs a time zone", details={"field": "expires_at"})
    if values.get("allowed_models") is not None:
        models = sorted(set(values["allowed_models"]))
        if not models:
            raise InvalidInput(
                "allowed_models names no model (null allows every one)", details={"field": "allowed_models"}
            )
        unknown = [] if known_models is None else sorted(set(models) - set(known_models))
        if unknown:
            raise InvalidInput(
                f"unknown models: {', '.join(unknown)}",
                details={"field": "allowed_models", "known": sorted(known_models or [])},
            )
        checked["allowed_models"] = models
    if values.get("budget_windows") is not None:
        try:
            windows = window_spans.validated(values["budget_windows"])
        except ValueError as exc:
            raise InvalidInput(str(exc), details={"field": "budget_windows"}) from None
        # Stored as text, exact; an empty map is no windows.
        checked["budget_windows"] = {name: str(limit) for name, limit in windows.items()} or None
    return checked


def list_(session: Session) -> list[ApiKey]:
    """Return every key, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke(session: Session, *, key_id_or_prefix: str | int) -> ApiKey:
    """Revoke the key with this id (an int: the id only) or prefix; revoking twice keeps the first time."""
    if isinstance(key_id_or_prefix, int):
        row = session.get(ApiKey, key_id_or_prefix)
    else:
        condition = ApiKey.prefix == key_id_or_prefix
        if key_id_or_prefix.isdigit():
            condition = or_(condition, ApiKey.id == int(key_id_or_prefix))
        row = session.scalars(select(ApiKey).where(condition)).one_or_none()
    if row is None:
        raise NotFound(f"no API key {key_id_or_prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


class RefusedKeys:
    """The hashes of keys refused lately, so that one bad key sent again and again costs one database lookup.

    Only refusals are remembered: a refused key (unknown or revoked) never becomes valid, since new keys are
    random, while an accepted key is looked up every time, so that revoking it takes effect at once.
    """

    def __init__(self, *, max_size: int = 10_000, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self._max_size, self._ttl_s, self._clock = max_size, ttl_s, clock
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(digest)
            if expiry is None:
                return False
            if expiry <= self._clock():
                del self._expiry[digest]
                return False
            return True

    def add(self, digest: str) -> None:
        with self._lock:
            self._expiry[digest] = self._clock() + self._ttl_s
            self._expiry.move_to_end(digest)
            while len(self._expiry) > self._max_size:
                self._expiry.popitem(last=False)


def authenticate(session: Session, *, key: str, refused: RefusedKeys | None = None) -> Identity | None:
    """Return the identity of a live key, or None for a malformed, unknown, revoked or expired one.

    A malformed key, or one in `refused`, is turned away without a database lookup; `refused` learns the rest.
    """
    if KEY_FORMAT.fullmatch(key) is None:
        return None
    digest = hash_key(key)
    if refused is not None and digest in refused:
        return None
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
    # compare_digest keeps the final comparison constant-time; the index lookup is by hash, not by key.
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
        if refused is not None:
            refused.add(digest)
        return None
    if status_of(row, now=utcnow()) == "expired":
        # Not remembered as refused: an admin may still move its expiry, and that must take effect at once.
        return None
    return Identity(
        api_key_id=row.id,
        name=row.name,
        is_admin=row.is_admin,
        monthly_budget=row.monthly_budget,
        rpm=row.rpm,
        tpm=row.tpm,
        allowed_models=None if row.allowed_models is None else frozenset(row.allowed_models),
        budget_windows=window_spans.validated(row.budget_windows),
    )
