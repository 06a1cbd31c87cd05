"""Engine and session factories built from settings, one per process."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings


def make_engine(settings: Settings) -> Engine:
    """Build the engine for DATABASE_URL with settings that suit many short transactions."""
    if settings.is_sqlite:
        engine = create_engine(settings.database_url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _configure_sqlite)
        # A deferred BEGIN: reads take no lock (WAL), and a transaction takes the write lock at its first
        # write, waiting on busy_timeout. Write transactions therefore start with their write (a
        # transaction that reads first and writes later could fail on a snapshot another writer moved),
        # and no transaction holds the write lock across network I/O, which under gevent would stall
        # every other request of the process waiting on that lock.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        return engine
    return create_engine(
        settings.database_url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


def _configure_sqlite(dbapi_connection: object, _record: object) -> None:
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Build the process's session factory."""
    return sessionmaker(bind=engine, expire_on_commit=False)
