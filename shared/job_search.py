"""Search the request log: filters, newest first, keyset pagination over (created_at, id)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

from sqlalchemy import ColumnElement
from sqlalchemy import and_
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import JobStatus
from shared.db.models import RequestLog
from shared.errors import InvalidInput

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class JobFilter:
    """What to look for; None means any. `api_key_id` restricts the search to one key's jobs."""

    status: JobStatus | None = None
    model: str | None = None
    tier: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    api_key_id: int | None = None


@dataclass(frozen=True)
class Position:
    """The last row of a page: the next page starts strictly after it in (created_at, id) descending order."""

    created_at: datetime
    job_id: str


@dataclass(frozen=True)
class Page:
    jobs: list[RequestLog]
    next_position: Position | None


def list_(session: Session, *, where: JobFilter, limit: int = DEFAULT_LIMIT, after: Position | None = None) -> Page:
    """Return up to `limit` matching jobs, newest first, starting after `after`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be 1..{MAX_LIMIT}", details={"field": "limit"})
    query = select(RequestLog).where(*_conditions(where))
    if after is not None:
        # Spelled out rather than as a row-value comparison, which SQLite's planner uses the index for
        # only in recent versions; both forms walk ix_request_logs_created_at_id backwards.
        query = query.where(
            or_(
                RequestLog.created_at < after.created_at,
                and_(RequestLog.created_at == after.created_at, RequestLog.id < after.job_id),
            )
        )
    # One row more than asked tells whether another page exists without a count.
    rows = list(session.scalars(query.order_by(RequestLog.created_at.desc(), RequestLog.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(jobs=rows, next_position=None)
    last = rows[limit - 1]
    return Page(jobs=rows[:limit], next_position=Position(created_at=last.created_at, job_id=last.id))


def _conditions(where: JobFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if where.status is not None:
        conditions.append(RequestLog.status == where.status)
    if where.model is not None:
        conditions.append(RequestLog.model_used == where.model)
    if where.tier is not None:
        conditions.append(RequestLog.tier == where.tier)
    if where.since is not None:
        conditions.append(RequestLog.created_at >= where.since)
    if where.until is not None:
        conditions.append(RequestLog.created_at < where.until)
    if where.text is not None:
        conditions.append(or_(RequestLog.id == where.text, RequestLog.prompt.icontains(where.text, autoescape=True)))
    if where.api_key_id is not None:
        conditions.append(RequestLog.api_key_id == where.api_key_id)
    return conditions


def encode_cursor(position: Position) -> str:
    """Return the opaque cursor clients send back for the next page."""
    raw = json.dumps([position.created_at.astimezone(UTC).isoformat(), position.job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """Return the position a cursor names; InvalidInput for anything this service did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not isinstance(job_id, str):
            raise ValueError("not a cursor")
    except (binascii.Error, ValueError, TypeError, OverflowError):
        raise InvalidInput("cursor is not one this service handed out", details={"field": "cursor"}) from None
    return Position(created_at=moment.astimezone(UTC), job_id=job_id)
