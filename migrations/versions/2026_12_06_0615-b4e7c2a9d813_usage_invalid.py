"""usage invalid: the job's flag for upstream usage that cannot be true, charged at the bound instead

Revision ID: b4e7c2a9d813
Revises: 7e2b4c9d1a05
Create Date: 2026-12-06 06:15:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b4e7c2a9d813"
down_revision: str | None = "7e2b4c9d1a05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_invalid", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("usage_invalid")
