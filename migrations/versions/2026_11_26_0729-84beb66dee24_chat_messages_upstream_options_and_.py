"""chat messages, upstream options and streaming

Revision ID: 84beb66dee24
Revises: 5abb1455d7d3
Create Date: 2026-11-26 07:29:59.065113+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "84beb66dee24"
down_revision: str | None = "5abb1455d7d3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("messages", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("upstream_options", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("stream", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("stream")
        batch_op.drop_column("upstream_options")
        batch_op.drop_column("messages")
