"""response cache, request ids and search indexes

Revision ID: 3c1d2e7a9b10
Revises: f09cae42205f
Create Date: 2026-11-26 08:40:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c1d2e7a9b10"
down_revision: str | None = "f09cae42205f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cached", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("cache_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_request_logs_created_at_id", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_request_logs_status_created_at", ["status", "created_at"], unique=False)
        batch_op.create_index("ix_request_logs_model_used_created_at", ["model_used", "created_at"], unique=False)
        batch_op.create_index("ix_request_logs_tier_created_at", ["tier", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_request_logs_tier_created_at")
        batch_op.drop_index("ix_request_logs_model_used_created_at")
        batch_op.drop_index("ix_request_logs_status_created_at")
        batch_op.drop_index("ix_request_logs_created_at_id")
        batch_op.drop_column("request_id")
        batch_op.drop_column("cache_key")
        batch_op.drop_column("cached")
