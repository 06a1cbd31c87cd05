"""One rule tells an unreachable database from a statement it refused."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError

from shared.store.disconnects import is_disconnect


class _DriverError(Exception):
    """A driver's error of a class SQLAlchemy does not map (wrapped as a plain DBAPIError)."""


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, sqlite3.OperationalError("unable to open database file")),
        InterfaceError("SELECT 1", {}, sqlite3.InterfaceError("connection closed")),
        DBAPIError("SELECT 1", {}, _DriverError("server closed the connection"), connection_invalidated=True),
        DBAPIError("SELECT 1", {}, ConnectionRefusedError("refused")),
    ],
)
def test_an_unreachable_database_is_a_disconnect(error: BaseException) -> None:
    assert is_disconnect(error)


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")),
        DBAPIError("SELECT 1", {}, _DriverError("syntax error")),
        ConnectionError("not a database error"),
    ],
)
def test_a_refused_statement_is_not_a_disconnect(error: BaseException) -> None:
    assert not is_disconnect(error)
