"""Search the request log: filters, newest first, keyset pagination over (created_at, id).

The text search (`prompt ILIKE '%text%'`) is served by the trigram index on PostgreSQL
(ix_request_logs_prompt_trgm). Where no index can serve it (SQLite, or text without a run of three letters or
digits, which has no trigram to look up) it reads every job in its time window, so the window is bounded:
at most TEXT_SEARCH_WINDOW, ending at `until` (default: now), starting there when `since` is not given.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from datetime import timedelta

from sqlalchemy import ColumnElement
from sqlalchemy import and_
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import InvalidInput
from shared.store.models import JobStatus
from shared.store.models import RequestLog
from shared.store.types import utcnow

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# The longest time window a text search without an index may read.
TEXT_SEARCH_WINDOW = timedelta(days=31)
# pg_trgm looks up trigrams of letters and digits only: text without three in a row has none.
_HAS_TRIGRAM = re.compile(r"[^\W_]{3}")


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
    if where.text is not None and not text_search_is_indexed(where.text, dialect=session.get_bind().dialect.name):
        where = bounded_in_time(where, now=utcnow())
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


def text_search_is_indexed(text: str, *, dialect: str) -> bool:
    """Tell whether an index finds the prompts containing `text`, rather than a read of every job."""
    return dialect == "postgresql" and _HAS_TRIGRAM.search(text) is not None


def bounded_in_time(where: JobFilter, *, now: datetime) -> JobFilter:
    """Return the filter with a window of at most TEXT_SEARCH_WINDOW; InvalidInput naming `since` if wider."""
    until = where.until or now
    if where.since is None:
        return dataclasses.replace(where, since=until - TEXT_SEARCH_WINDOW)
    if until - where.since > TEXT_SEARCH_WINDOW:
        raise InvalidInput(
            f"a text search here covers at most {TEXT_SEARCH_WINDOW.days} days: narrow since..until",
            details={"field": "since", "max_days": TEXT_SEARCH_WINDOW.days},
        )
    return where


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
        # PostgreSQL writes this as `prompt ILIKE '%' || :text || '%'`, which the trigram index serves.
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
