"""Pooled PostgreSQL connections: pinged only after sitting idle, and replaced when found dead."""

from __future__ import annotations

import psycopg
from sqlalchemy import Engine
from sqlalchemy import text

from shared.store import session as db_session
from tests.support import databases


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_killed_while_idle_is_replaced_before_use(postgres_engine: Engine, monkeypatch) -> None:
    first = _backend_pid(postgres_engine)
    with psycopg.connect(databases.ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    # The idle connection in the pool is the dead one: with no idle time needed, its checkout pings it.
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)

    assert _backend_pid(postgres_engine) != first


def test_a_connection_back_from_use_moments_ago_is_not_pinged(postgres_engine: Engine) -> None:
    _backend_pid(postgres_engine)
    pings: list[object] = []
    original = postgres_engine.dialect.do_ping
    postgres_engine.dialect.do_ping = lambda connection: pings.append(connection) or original(connection)  # type: ignore[method-assign]

    _backend_pid(postgres_engine)

    assert pings == []
