"""job worker

Revision ID: d4b7e2a9c615
Revises: b7e2d4a9c815
Create Date: 2026-12-08 10:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d4b7e2a9c615"
down_revision: str | None = "b7e2d4a9c815"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: rows claimed before it existed name no worker, and the reaper leaves those to
    # their lease.
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("worker")
