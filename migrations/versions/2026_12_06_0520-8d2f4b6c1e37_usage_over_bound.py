"""usage over bound: the job's flag and the month's hold

Revision ID: 8d2f4b6c1e37
Revises: 7d2f4b8e1c06
Create Date: 2026-12-06 05:20:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8d2f4b6c1e37"
down_revision: str | None = "7d2f4b8e1c06"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_over_bound", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("monthly_budgets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("held_by_job", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("monthly_budgets", schema=None) as batch_op:
        batch_op.drop_column("held_by_job")
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("usage_over_bound")
