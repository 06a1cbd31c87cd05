"""The one rule for "the database is unreachable": the web tier answers 503 for it, the worker retries a
finish through it."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import InterfaceError
from sqlalchemy.exc import OperationalError


def is_disconnect(error: BaseException) -> bool:
    """Whether `error` says the database could not be reached, rather than that it refused the statement.

    SQLAlchemy wraps each driver's OperationalError and InterfaceError (a refused or dropped connection, a
    server shutting down) in its own classes; it marks a connection it found dead as invalidated; and some
    drivers let the operating system's ConnectionError through as the original error.
    """
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and (error.connection_invalidated or isinstance(error.orig, ConnectionError))
