"""Throw-away PostgreSQL databases for tests, on the local server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import MetaData
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def temporary_postgres_database(prefix: str = "model_router_test") -> Iterator[str]:
    """Create a uniquely named database, yield its SQLAlchemy URL, and drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class ReusableSchema:
    """The model's tables in one PostgreSQL database, emptied between tests in one round trip.

    Emptying is DELETE from every table and a restart of every sequence: TRUNCATE costs a quarter of a second
    per call on a small database (it swaps files and syncs them), DELETE of a test's few rows a millisecond,
    and drop/create of the schema more still. Tables a test dropped are created again.
    """

    def __init__(self, url: str, metadata: MetaData) -> None:
        self.url = url
        self.metadata = metadata
        deletes = "; ".join(f'DELETE FROM "{table.name}"' for table in reversed(metadata.sorted_tables))
        restarts = (
            "SELECT setval(oid, 1, false) FROM pg_class WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace"
        )
        self._empty = f"{deletes}; {restarts}"
        self._connection = psycopg.connect(url, autocommit=True)
        self._create()

    def empty(self) -> None:
        """Leave every table in place and empty, with ids counting from 1 again."""
        try:
            self._connection.execute(self._empty)
        except psycopg.errors.UndefinedTable:
            self._create()
            self._connection.execute(self._empty)

    def close(self) -> None:
        self._connection.close()

    def _create(self) -> None:
        engine = create_engine(self.url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=NullPool)
        self.metadata.create_all(engine)
        engine.dispose()
