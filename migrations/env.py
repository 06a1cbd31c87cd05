"""Alembic environment: the URL comes from settings (or the caller), the metadata from the models."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine

from shared.config import load_database_settings
from shared.store import models  # registers the tables on Base.metadata
from shared.store.base import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    # A caller (tests, `model-router db upgrade`) may hand the URL in; otherwise DATABASE_URL decides (and only
    # it: migrating needs no upstream or queue settings).
    return config.attributes.get("database_url") or load_database_settings().database_url


def _on_this_dialect(dialect: str) -> object:
    """Return autogenerate's filter that skips schema items the models mark as another dialect's only."""

    def include(item: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
        only_on = getattr(item, "info", {}).get(models.ONLY_ON)
        return only_on is None or only_on == dialect

    return include


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_database_url())
    try:
        with engine.connect() as connection:
            # Batch mode lets ALTER TABLE work on SQLite, which cannot alter columns in place.
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
                include_object=_on_this_dialect(connection.dialect.name),
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()  # a failed migration leaves no connection open either


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
