"""rate limit choice per job

Revision ID: 5a7c9e1b3d42
Revises: b4e7c2a9d813
Create Date: 2026-12-06 06:20:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5a7c9e1b3d42"
down_revision: str | None = "b4e7c2a9d813"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("on_rate_limit", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("on_rate_limit")
