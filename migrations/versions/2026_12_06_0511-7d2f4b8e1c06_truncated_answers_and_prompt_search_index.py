"""truncated answers and the prompt search index

Revision ID: 7d2f4b8e1c06
Revises: e9613c75ec6e
Create Date: 2026-12-06 05:10:00.000000+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d2f4b8e1c06"
down_revision: str | None = "e9613c75ec6e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("truncated", sa.Boolean(), server_default=sa.false(), nullable=False))
    if op.get_context().dialect.name == "postgresql":
        # Trigrams let `prompt ILIKE '%text%'` (the request-log search) use an index instead of reading every job.
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # Built concurrently, outside the migration's transaction: jobs keep being accepted and finished while
        # a large request log is indexed.
        with op.get_context().autocommit_block():
            op.create_index(
                "ix_request_logs_prompt_trgm",
                "request_logs",
                ["prompt"],
                unique=False,
                postgresql_using="gin",
                postgresql_ops={"prompt": "gin_trgm_ops"},
                postgresql_concurrently=True,
            )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_index("ix_request_logs_prompt_trgm", table_name="request_logs")
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_column("truncated")
