"""The migration that encrypts stored callback URLs: existing rows are sealed with the configured key, the
delivery records masked, and a downgrade opens them again."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from shared.config import get_settings
from shared.errors import ConfigError
from shared.security import sealing
from shared.store import migrate
from tests.support.databases import temporary_postgres_database

BEFORE = "3c1d2e7a9b10"
ENCRYPTING = "e9613c75ec6e"
URL = "https://hooks.example.com/services/path-secret?token=query-secret"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrate.db"
        return
    with temporary_postgres_database("model_router_seal") as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch):
    """The settings the migration reads (get_settings), with WEBHOOK_SECRET set."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("WEBHOOK_SECRET", "migration-secret")
    monkeypatch.delenv("WEBHOOK_URL_KEYS", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _filler(column: sa.Column) -> Any:
    if isinstance(column.type, sa.Enum):
        return column.type.enums[-1]
    return {int: 0, float: 0.0, bool: False, str: "x", datetime: datetime.now(UTC)}.get(column.type.python_type, "x")


def _insert(connection: sa.Connection, table_name: str, **values: Any) -> None:
    """Insert a row with `values`, any other required column filled with a plain value."""
    table = sa.Table(table_name, sa.MetaData(), autoload_with=connection)
    for column in table.columns:
        generated = column.primary_key and isinstance(column.type, sa.Integer)
        if column.name not in values and not column.nullable and column.server_default is None and not generated:
            values[column.name] = _filler(column)
    connection.execute(table.insert().values(**values))


def _column(engine: sa.Engine, table: str, column: str) -> list[str | None]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(f"SELECT {column} FROM {table} ORDER BY 1")).scalars())


def test_existing_callback_urls_are_encrypted_and_deliveries_masked(database_url: str, environment) -> None:
    config = migrate.alembic_config(database_url)
    command.upgrade(config, BEFORE)
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            _insert(connection, "batches", id="b1", total=1, callback_url=URL)
            _insert(connection, "request_logs", id="j1", status="succeeded", callback_url=URL, batch_id="b1")
            _insert(connection, "request_logs", id="j2", status="queued", callback_url=None)
            _insert(connection, "webhook_deliveries", resource="job", resource_id="j1", url=URL, attempt=1,
                    delivered=True)  # fmt: skip
        command.upgrade(config, ENCRYPTING)
        sealer = sealing.require(get_settings())
        stored = [value for value in _column(engine, "request_logs", "callback_url") if value is not None]
        stored += _column(engine, "batches", "callback_url")
        assert len(stored) == 2
        for value in stored:
            assert "secret" not in value and "hooks.example.com" not in value
            assert sealer.open(value) == URL
        assert _column(engine, "webhook_deliveries", "url") == ["https://hooks.example.com/…?token=***"]

        command.downgrade(config, BEFORE)
        assert _column(engine, "batches", "callback_url") == [URL]
        assert [value for value in _column(engine, "request_logs", "callback_url") if value] == [URL]
    finally:
        engine.dispose()


def test_without_a_key_the_migration_stops_rather_than_keep_urls_in_clear(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("WEBHOOK_URL_KEYS", raising=False)
    get_settings.cache_clear()
    config = migrate.alembic_config(database_url)
    command.upgrade(config, BEFORE)
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            _insert(connection, "batches", id="b1", total=1, callback_url=URL)
        with pytest.raises(ConfigError, match="WEBHOOK_URL_KEYS or WEBHOOK_SECRET"):
            command.upgrade(config, ENCRYPTING)
        assert _column(engine, "batches", "callback_url") == [URL]  # nothing half-done
    finally:
        engine.dispose()
        get_settings.cache_clear()
