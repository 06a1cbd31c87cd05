"""Run Alembic migrations from code (the CLI, `make run`, and tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.config import load_database_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str | None = None) -> Config:
    """Return an Alembic config for this project, optionally bound to `database_url`."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url or load_database_settings().database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(revision: str = "head", *, database_url: str | None = None) -> None:
    """Migrate the database to `revision`."""
    command.upgrade(alembic_config(database_url), revision)
