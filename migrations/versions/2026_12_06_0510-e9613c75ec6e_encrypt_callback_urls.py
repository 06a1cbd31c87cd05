"""encrypt callback urls at rest, mask delivery urls

Callback URLs (their query strings and paths often are the receiver's secret) were stored in clear. Jobs' and
batches' `callback_url` become Fernet tokens (shared.security.sealing) with the key the settings configure
(WEBHOOK_URL_KEYS, else derived from WEBHOOK_SECRET); the worker opens them to deliver. The record of delivery
attempts keeps only the masked form (shared.security.masking). Only rows that hold a URL are touched, and the key
is read only when there is one: a database without callbacks migrates without any webhook setting.

Downgrade decrypts the callback URLs again; the delivery records stay masked (their URLs are not recoverable).

Revision ID: e9613c75ec6e
Revises: 3c1d2e7a9b10
Create Date: 2026-12-06 05:10:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.config import get_settings
from shared.security import masking
from shared.security import sealing

revision: str = "e9613c75ec6e"
down_revision: str | None = "3c1d2e7a9b10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, key column, URL column)
SEALED_COLUMNS = (("request_logs", "id", "callback_url"), ("batches", "id", "callback_url"))
CHUNK = 1000


def _rewrite(table: str, key: str, column: str, *, todo: Callable[[str], bool], change: Callable[[str], str]) -> None:
    """Rewrite every non-null `column` value `todo` selects with `change`, in chunks of keys."""
    connection = op.get_bind()
    rows = sa.table(table, sa.column(key), sa.column(column))
    after = None
    while True:
        query = sa.select(rows.c[key], rows.c[column]).where(rows.c[column].is_not(None)).order_by(rows.c[key])
        if after is not None:
            query = query.where(rows.c[key] > after)
        chunk = connection.execute(query.limit(CHUNK)).all()
        if not chunk:
            return
        for row_key, value in chunk:
            if todo(value):
                connection.execute(sa.update(rows).where(rows.c[key] == row_key).values({column: change(value)}))
        after = chunk[-1][0]


def _has_urls() -> bool:
    connection = op.get_bind()
    for table, _, column in SEALED_COLUMNS:
        rows = sa.table(table, sa.column(column))
        if connection.execute(sa.select(rows.c[column]).where(rows.c[column].is_not(None)).limit(1)).first():
            return True
    return False


def _is_clear(value: str) -> bool:
    # A URL has "://"; a Fernet token is URL-safe base64 and never does.
    return "://" in value


def upgrade() -> None:
    if _has_urls():
        sealer = sealing.require(get_settings())
        for table, key, column in SEALED_COLUMNS:
            _rewrite(table, key, column, todo=_is_clear, change=sealer.seal)
    _rewrite(
        "webhook_deliveries", "id", "url", todo=lambda _: True, change=lambda url: masking.mask_url(url, path=False)
    )


def downgrade() -> None:
    if not _has_urls():
        return
    sealer = sealing.require(get_settings())
    for table, key, column in SEALED_COLUMNS:
        _rewrite(table, key, column, todo=lambda value: not _is_clear(value), change=sealer.open)
