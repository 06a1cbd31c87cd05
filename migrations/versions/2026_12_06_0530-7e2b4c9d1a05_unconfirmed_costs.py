"""unconfirmed costs: calls noted in flight and lost calls charged at their bound

Revision ID: 7e2b4c9d1a05
Revises: 8d2f4b6c1e37
Create Date: 2026-12-06 05:30:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.store.types

revision: str = "7e2b4c9d1a05"
down_revision: str | None = "8d2f4b6c1e37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("in_flight_cost", shared.store.types.Money(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("unconfirmed_cost", shared.store.types.Money(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("unconfirmed_cost")
        batch_op.drop_column("in_flight_cost")
