"""job deadlines

Revision ID: 4255c8659b1d
Revises: 826ec728cf0b
Create Date: 2026-11-26 06:26:05.123820+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4255c8659b1d"
down_revision: str | None = "826ec728cf0b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("deadline_s")
