"""key tpm, expiry and allowed models

Revision ID: c3a8e5f1b274
Revises: c3d8e1f5a270
Create Date: 2026-12-07 09:00:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.store.types

revision: str = "c3a8e5f1b274"
down_revision: str | None = "c3d8e1f5a270"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("allowed_models", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", shared.store.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("allowed_models")
        batch_op.drop_column("tpm")
