"""Migrations: one head, they build the schema from nothing, and the models match what they build."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy import inspect

from shared.store import migrate
from tests.support.databases import temporary_postgres_database

TABLES = {
    "request_logs", "request_attempts", "monthly_budgets", "budget_buckets", "api_keys", "budget_alerts", "batches",
    "idempotency_keys", "webhook_deliveries", "alembic_version",
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrate.db"
        return
    with temporary_postgres_database("model_router_migrate") as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


def test_there_is_exactly_one_head() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_upgrade_head_builds_every_table(empty_database_url: str) -> None:
    migrate.upgrade("head", database_url=empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
    finally:
        engine.dispose()


def test_models_do_not_drift_from_the_migrations(empty_database_url: str) -> None:
    config = migrate.alembic_config(empty_database_url)
    command.upgrade(config, "head")
    command.check(config)  # raises when autogenerate would emit anything


def test_downgrade_to_base_and_back(empty_database_url: str) -> None:
    config = migrate.alembic_config(empty_database_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    engine = create_engine(empty_database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    command.upgrade(config, "head")
