"""attempt deployment: which of a model's deployments served each attempt

Revision ID: c3d8e1f5a270
Revises: 5a7c9e1b3d42
Create Date: 2026-12-06 07:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c3d8e1f5a270"
down_revision: str | None = "5a7c9e1b3d42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: every attempt made before has no deployment to name (its model had just one).
    with op.batch_alter_table("request_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deployment", sa.String(length=48), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_attempts", schema=None) as batch_op:
        batch_op.drop_column("deployment")
