"""INSERT … ON CONFLICT DO NOTHING on PostgreSQL and SQLite, telling whether the row went in.

Whether a row was inserted is read from the row RETURNING gives back, never from the cursor's rowcount:
a DBAPI's rowcount after an INSERT is not reliable across versions (SQLAlchemy 2.1 adds an implicit
RETURNING to this statement on PostgreSQL, and psycopg then reports -1 for a row that went in).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from shared.store.base import Base

_INSERTS: dict[str, Callable[[Table], Any]] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def upsert_capable_insert(table: Table, *, dialect: str) -> Any:
    """Return the INSERT of `table` in `dialect`'s own form, the one that has ON CONFLICT (PostgreSQL, SQLite)."""
    return _INSERTS[dialect](table)


def insert_or_ignore(
    session: Session, model: type[Base], values: Mapping[str, Any], *, conflict_on: Sequence[str]
) -> bool:
    """Insert one row of `model` unless a row with the same `conflict_on` columns (a unique constraint's)
    exists; return whether this call inserted it.

    A concurrent insert of the same row waits for the other transaction and then does nothing, so of two
    racing callers exactly one is told True.
    """
    table: Table = model.__table__  # type: ignore[assignment]
    statement = (
        upsert_capable_insert(table, dialect=session.get_bind().dialect.name)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(conflict_on))
        .returning(*table.primary_key.columns)
    )
    return session.execute(statement).first() is not None
