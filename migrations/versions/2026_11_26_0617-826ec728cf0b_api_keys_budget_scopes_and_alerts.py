"""api keys, budget scopes and alerts

Revision ID: 826ec728cf0b
Revises: 4f67a9f51b60
Create Date: 2026-11-26 06:17:07.464700+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.store.types

revision: str = "826ec728cf0b"
down_revision: str | None = "4f67a9f51b60"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("monthly_budget", shared.store.types.Money(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("created_at", shared.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", shared.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_prefix"), ["prefix"], unique=False)

    op.create_table(
        "budget_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("spent", shared.store.types.Money(), nullable=False),
        sa.Column("monthly_limit", shared.store.types.Money(), nullable=False),
        sa.Column("fired_at", shared.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_alerts")),
        sa.UniqueConstraint("scope", "year", "month", "threshold", name="uq_budget_alerts_scope_year_month_threshold"),
    )
    with op.batch_alter_table("monthly_budgets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=64), server_default="global", nullable=False))
        batch_op.drop_constraint(batch_op.f("uq_monthly_budgets_year_month"), type_="unique")
        batch_op.create_unique_constraint("uq_monthly_budgets_scope_year_month", ["scope", "year", "month"])

    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_tier", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("downgraded_from", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", shared.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_request_logs_api_key_id"), ["api_key_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_request_logs_api_key_id_api_keys"), "api_keys", ["api_key_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("request_logs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_request_logs_api_key_id_api_keys"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_request_logs_api_key_id"))
        batch_op.drop_column("enqueued_at")
        batch_op.drop_column("downgraded_from")
        batch_op.drop_column("max_tier")
        batch_op.drop_column("api_key_id")

    # Per-key ledgers cannot survive the old one-row-per-month constraint.
    op.execute("DELETE FROM monthly_budgets WHERE scope <> 'global'")
    with op.batch_alter_table("monthly_budgets", schema=None) as batch_op:
        batch_op.drop_constraint("uq_monthly_budgets_scope_year_month", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_monthly_budgets_year_month"), ["year", "month"])
        batch_op.drop_column("scope")

    op.drop_table("budget_alerts")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_prefix"))

    op.drop_table("api_keys")
