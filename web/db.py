"""One database session per request, opened lazily and closed at teardown."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import Flask
from flask import current_app
from flask import g
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.jobs import lifecycle
from shared.store.models import RequestLog
from shared.store.session import make_engine
from shared.store.session import make_sessionmaker

T = TypeVar("T")


def init_app(app: Flask, settings: Settings) -> None:
    """Build the engine and session factory for this app and close sessions after each request."""
    engine = make_engine(settings)
    app.extensions["db_engine"] = engine
    app.extensions["db_sessions"] = make_sessionmaker(engine)
    app.teardown_appcontext(_close_session)


def get_session() -> Session:
    """Return this request's session."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["db_sessions"]()
    return g.db_session


def look_at_job(job_id: str, read: Callable[[RequestLog], T]) -> T:
    """Return what `read` makes of the job as the database holds it now (not as this session last saw it),
    ending the read's transaction: a request waiting for its job holds no transaction while it waits."""
    session = get_session()
    session.expire_all()
    try:
        return read(lifecycle.get_or_raise(session, job_id=job_id))
    finally:
        session.rollback()


def _close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
