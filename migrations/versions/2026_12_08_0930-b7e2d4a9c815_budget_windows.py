"""budget windows: hourly buckets per scope, a key's window limits, a job's windowed scopes

Revision ID: b7e2d4a9c815
Revises: e4b7d2a9c615
Create Date: 2026-12-08 09:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.store.types

revision: str = "b7e2d4a9c815"
down_revision: str | None = "e4b7d2a9c615"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budget_buckets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("hour", shared.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("spent", shared.store.types.Money(), nullable=False),
        sa.Column("reserved", shared.store.types.Money(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_buckets")),
        sa.UniqueConstraint("scope", "hour", name="uq_budget_buckets_scope_hour"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("budget_windows", sa.JSON(), nullable=True))
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("windowed_scopes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("windowed_scopes")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("budget_windows")
    op.drop_table("budget_buckets")
