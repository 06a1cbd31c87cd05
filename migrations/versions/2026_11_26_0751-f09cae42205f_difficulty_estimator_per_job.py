"""difficulty estimator per job

Revision ID: f09cae42205f
Revises: 84beb66dee24
Create Date: 2026-11-26 07:51:47.331869+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f09cae42205f"
down_revision: str | None = "84beb66dee24"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("difficulty_estimator", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("difficulty_estimator")
