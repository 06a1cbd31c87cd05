"""Engine and session factories built from settings, one per process."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import Row
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import exc
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import DatabaseSettings

# A pooled connection that was in use moments ago is almost surely alive; pinging it before every
# transaction (pool_pre_ping) would cost a round trip each. Only connections idle longer than this are pinged.
PING_AFTER_IDLE_S = 5.0


def execute_alone(engine: Engine, statement: Any, params: dict[str, Any]) -> list[Row[Any]]:
    """Run one statement with no transaction open (PostgreSQL): the server commits it as it ends.

    A transaction costs a client round trip for BEGIN and one for COMMIT, and holds its row locks across
    the second; a statement that does all of a change by itself needs neither.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        return list(connection.execute(statement, params))


def make_engine(settings: DatabaseSettings) -> Engine:
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
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection that sat idle in the pool before handing it out; a dead one is replaced unseen."""

    @event.listens_for(engine, "checkin")
    def note_checkin(_dbapi_connection: object, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping_if_idle(dbapi_connection: object, record: Any, _proxy: object) -> None:
        # A connection the pool has just opened has no check-in yet (its info goes with it).
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool discards this connection and checks out another (SQLAlchemy's disconnect handling).
            raise exc.DisconnectionError() from error


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
